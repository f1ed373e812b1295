"""Unlabeled image sets: a folder or ZIP of images without labels, decoded once (with the same hostile-input-safe
readers and ZIP rules as ingest) and stored as one array at a fixed size, for autoencoder pre-training.

Folder layout (LIGHTBOX_HOME/unlabeled/<id>/):
    manifest.json     id, name, created, owner, source, images, channels, stored_size, files_seen, problems
    images.npy        float16 (N, C, STORED_SIZE, STORED_SIZE) in [0, 1]
"""
from __future__ import annotations

import hashlib
import json
import re
import secrets
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from engine import workspace
from engine.accounts import access
from engine.data import io
from engine.data.dataset import cap_image, match_channels, resize_image
from engine.data.dicom import NotAnImage
from engine.data.layout import MASK_FOLDERS, ignored, problem
from engine.data.manifest import DATASET_ID
from engine.data.uploads import extract_zip, write_files
from engine.errors import UserError, shown

# Every image is stored as a square of this side (like the training cache, aspect is not kept): pre-training
# runs at this size or below, and 10,000 gray images cost 1.3 GB at float16.
STORED_SIZE = 256

Progress = Callable[[int, int], None]


def unlabeled_root() -> Path:
    path = workspace.home() / "unlabeled"
    path.mkdir(parents=True, exist_ok=True)
    return path


def unlabeled_dir(set_id: str) -> Path:
    """The set's folder; an id ingest could not have made ('../x', a 100 KB string) or an unknown one is refused."""
    if not isinstance(set_id, str) or not DATASET_ID.fullmatch(set_id) or ".." in set_id \
            or not (unlabeled_root() / set_id / "manifest.json").is_file():
        raise UserError(f"Unlabeled image set '{shown(set_id)}' does not exist; upload the images first or pick "
                        "one from the list.")
    return unlabeled_root() / set_id


def load_unlabeled(set_id: str) -> dict:
    return json.loads((unlabeled_dir(set_id) / "manifest.json").read_text())


def load_images(set_id: str, size: int) -> np.ndarray:
    """float32 (N, C, size, size) in [0, 1]: the stored images, resized when size differs from STORED_SIZE."""
    stored = np.load(unlabeled_dir(set_id) / "images.npy", mmap_mode="r")
    if size == stored.shape[-1]:
        return np.asarray(stored, dtype=np.float32)
    return np.stack([resize_image(image, size) for image in stored]).astype(np.float32)


def list_unlabeled(actor=None) -> list[dict]:
    """Manifests of the unlabeled sets the actor may use (a student: own, instructors' and ownerless), newest first."""
    found = []
    for path in unlabeled_root().glob("*/manifest.json"):
        manifest = json.loads(path.read_text())
        if access.can_see_dataset(actor, manifest):
            found.append(manifest)
    return sorted(found, key=lambda m: m.get("created", ""), reverse=True)


def ingest_unlabeled(path: str | Path, name: str | None = None, owner: str | None = None,
                     progress: Progress | None = None) -> str:
    """Store the images of a folder or .zip as an unlabeled set; returns its id. Files that cannot be read are
    skipped, each with one sentence in the manifest's "problems"; an upload with no readable image is refused."""
    src = Path(path)
    if not src.exists():
        raise UserError(f"{src} does not exist; give a folder or a .zip file of images.")
    with workspace.scratch("unlabeled-") as scratch:
        folder, skipped = src, []
        if src.is_file():
            if src.suffix.lower() != ".zip":
                raise UserError(f"{src.name} is not a folder or a .zip file; put the images in a folder or a ZIP.")
            folder = scratch / "upload"
            skipped = extract_zip(src, folder)       # every ZIP rule checked before anything is written
        return _store(folder, name or (src.stem if src.is_file() else src.name), src.name, owner, skipped,
                      scratch, progress)


def ingest_unlabeled_files(files: list[tuple[str, bytes]], name: str | None = None, owner: str | None = None,
                           progress: Progress | None = None) -> str:
    """The same for loose uploaded files given as (relative path, content); a single .zip is read as an archive."""
    if not files:
        raise UserError("No files were uploaded; add images or a ZIP and try again.")
    with workspace.scratch("unlabeled-") as scratch:
        folder = scratch / "upload"
        skipped = write_files(files, folder)
        if len(files) == 1 and files[0][0].lower().endswith(".zip"):
            zipped = next(p for p in folder.rglob("*") if p.is_file())
            return ingest_unlabeled(zipped, name or zipped.stem, owner, progress)
        return _store(folder, name or "Unlabeled images", "upload", owner, skipped, scratch, progress)


def _store(folder: Path, name: str, source: str, owner: str | None, problems: list[dict], scratch: Path,
           progress: Progress | None) -> str:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not ignored(p.relative_to(folder).parts))
    staging = scratch / "set"
    (staging / "parts").mkdir(parents=True)
    digests: dict[str, str] = {}
    stored, channels = [], 1
    for done, file in enumerate(files, 1):
        part = _store_one(file, file.relative_to(folder).as_posix(), staging / "parts", len(stored), digests,
                          problems)
        stored += part
        channels = max([channels] + [c for _, c in part])
        if progress:
            progress(done, len(files))
    if not stored:
        kinds = ", ".join(sorted({p["kind"].replace("_", " ") for p in problems})) or "no image files"
        raise UserError(f"No readable image was found in the upload ({len(problems)} file(s) skipped: {kinds}); "
                        "upload PNG, JPEG, TIFF, BMP or DICOM images.")
    images = np.lib.format.open_memmap(staging / "images.npy", mode="w+", dtype=np.float16,
                                       shape=(len(stored), channels, STORED_SIZE, STORED_SIZE))
    for i, (part, _) in enumerate(stored):
        images[i] = match_channels(np.load(part), channels)
    images.flush()
    del images
    shutil.rmtree(staging / "parts")
    set_id = f"{_slug(name)}-{secrets.token_hex(3)}"
    manifest = {"id": set_id, "name": name, "created": datetime.now(UTC).isoformat(), "owner": owner,
                "source": source, "images": len(stored), "channels": channels, "stored_size": STORED_SIZE,
                "files_seen": len(files) + sum(p["kind"] == "skipped_entry" for p in problems),
                "skipped": len(problems), "problems": problems}
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
    staging.rename(unlabeled_root() / set_id)        # the set appears whole or not at all
    return set_id


def _store_one(file: Path, path: str, parts: Path, first: int, digests: dict[str, str],
               problems: list[dict]) -> list[tuple[Path, int]]:
    """Decode one file into resized frames saved under `parts`; a file that cannot be used adds a problem."""
    if any(p.lower() in MASK_FOLDERS for p in Path(path).parts[:-1]):
        problems.append(problem(path, "mask", f"{path} lies in a masks/labels folder; pre-training needs no "
                                              "labels, so it was left out."))
        return []
    if not io.is_supported(file):
        problems.append(problem(path, "unsupported", f"{path} is not an image file (PNG, JPEG, TIFF, BMP or "
                                                     "DICOM); it was skipped."))
        return []
    try:
        data = file.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest in digests:
            problems.append(problem(path, "duplicate", f"{path} has the same content as {digests[digest]}; "
                                                       "kept one."))
            return []
        decoded = io.decode_file(data, path)
    except NotAnImage as err:
        problems.append(problem(path, "unsupported", str(err)))
        return []
    except UserError as err:
        problems.append(problem(path, "unreadable", f"{err} It was skipped."))
        return []
    except Exception as err:  # noqa: BLE001 - a decoder tripping on one malformed file skips that file only
        problems.append(problem(path, "unreadable", f"{path} could not be read as an image "
                                                    f"({type(err).__name__}); it was skipped."))
        return []
    digests[digest] = path
    out = []
    for frame in decoded.frames:
        target = parts / f"{first + len(out):07d}.npy"
        np.save(target, resize_image(cap_image(frame), STORED_SIZE).astype(np.float16))
        out.append((target, frame.shape[0]))
    return out


def delete_unlabeled(set_id: str) -> None:
    shutil.rmtree(unlabeled_dir(set_id), ignore_errors=True)


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:24].strip("-")
    return slug or "unlabeled"
