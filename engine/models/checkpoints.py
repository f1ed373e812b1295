"""Checkpoint and weight files on disk: the one place that calls torch.load (always weights_only=True) and that
writes a run's checkpoints, so a foreign, damaged or malicious file, a read-only folder or a full disk each end
in one sentence that names the file or folder and says what to do — never torch's own text."""
from __future__ import annotations

import errno
import os
import pickle
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from engine.errors import UserError

CHECKPOINT_KEYS = ("model", "config", "dataset")        # what every Lightbox checkpoint holds
RESUME_KEYS = (*CHECKPOINT_KEYS, "optimizer", "scheduler", "scaler", "epoch", "step", "best_value", "best_epoch",
               "best_metrics", "bad_epochs", "rng")


def read_torch_file(path: Path | str, refused: str, remedy: str, map_location: Any = "cpu") -> Any:
    """torch.load(path, weights_only=True); any failure raises UserError("<refused> (<why>); <remedy>.").

    weights_only refuses pickled Python objects (which could run code) but says so in six lines that suggest
    turning it off; a damaged file fails with zip, EOF, OS or even KeyError text. The user gets the reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")        # e.g. "Detected pickle protocol 4": noise for a user
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        why = "the file does not exist"
    except IsADirectoryError:
        why = "it is a folder, not a file"
    except PermissionError:
        why = "permission denied"
    except pickle.UnpicklingError:
        why = "it holds Python objects besides weights and settings, which are never loaded because they could run code"
    except (EOFError, zipfile.BadZipFile, OSError, KeyError, ValueError, RuntimeError, TypeError, AttributeError,
            IndexError, UnicodeDecodeError):
        why = "it is damaged, truncated or not a file saved by PyTorch"
    raise UserError(f"{refused} ({why}); {remedy}.")


def load_checkpoint(path: Path, run_label: str, keys: tuple[str, ...] = CHECKPOINT_KEYS,
                    map_location: Any = "cpu") -> dict:
    """A run's best.pt or last.pt, refused in one sentence unless it is a Lightbox checkpoint with `keys`."""
    refused = f"{path.name} of run {run_label} is not a Lightbox checkpoint"
    remedy = "delete the run and train it again"
    ckpt = read_torch_file(path, refused, remedy, map_location)
    if not isinstance(ckpt, dict) or not all(key in ckpt for key in keys):
        raise UserError(f"{refused} (it lacks the model's weights, settings or dataset description); {remedy}.")
    return ckpt


def not_a_checkpoint(path: Path, run_label: str, why: str) -> UserError:
    """The refusal for a file that loaded but whose contents do not rebuild the run's model."""
    return UserError(f"{path.name} of run {run_label} is not a Lightbox checkpoint ({why}); "
                     "delete the run and train it again.")


# ---- writing ------------------------------------------------------------------------------------------------

def save_checkpoint(obj: Any, path: Path) -> None:
    """Write atomically (temp file + rename: a crash never leaves half a checkpoint); a failed write removes its
    temp file and raises UserError naming the folder and the cause (read-only, disk full, folder gone)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise UserError(write_failure(path.parent, exc, "the checkpoint")) from exc


_CAUSES = {
    "read-only": ("the folder is read-only (permission denied)", "fix the folder's permissions"),
    "read-only disk": ("the disk is read-only", "make the disk writable"),
    "full": ("the disk is full", "free disk space"),
    "missing": ("the folder is missing (moved, deleted or replaced by a file)", "put the run folder back"),
    "unknown": ("the write failed", "free space or fix permissions"),
}
_ERRNO_CAUSE = {errno.EACCES: "read-only", errno.EPERM: "read-only", errno.EROFS: "read-only disk",
                errno.ENOSPC: "full", errno.EDQUOT: "full", errno.EFBIG: "full", errno.ENOENT: "missing",
                errno.ENOTDIR: "missing"}
# torch.save's C++ writer raises RuntimeError with the C library's text (checked on torch 2.14):
#   "[enforce fail at inline_container.cc:747] . open file failed with strerror: Permission denied"
#   "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"      (a short write: the disk filled)
#   "Parent directory /x does not exist."
_TEXT_CAUSE = (("permission denied", "read-only"), ("operation not permitted", "read-only"),
               ("read-only file system", "read-only disk"), ("no space left", "full"), ("quota", "full"),
               ("unexpected pos", "full"), ("does not exist", "missing"), ("not a directory", "missing"),
               ("no such file", "missing"))


def write_failure(folder: Path, exc: BaseException, what: str) -> str:
    """One sentence for a write into `folder` that failed: which folder, why, and what to do before resuming."""
    kind = _ERRNO_CAUSE.get(getattr(exc, "errno", None) or -1)
    if kind is None:
        text = str(exc).lower()
        kind = next((k for fragment, k in _TEXT_CAUSE if fragment in text), None) or _probe(folder)
    cause, fix = _CAUSES[kind]
    return f"Could not save {what} in {folder}: {cause}; {fix}, then resume the run."


def _probe(folder: Path) -> str:
    """The likely cause when the error text names none: look at the folder itself."""
    if not folder.is_dir():
        return "missing"
    if not os.access(folder, os.W_OK):
        return "read-only"
    try:
        if shutil.disk_usage(folder).free < 16 * 2**20:
            return "full"
    except OSError:
        pass
    return "unknown"

