"""Pre-training in the background for the Pre-train page: a `python -m engine pretrain` process of its own (a click
in the browser must not kill it, and Streamlit must not train in its script thread), which reports its progress
in a small JSON file the page re-reads."""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

from engine import workspace
from engine.errors import UserError

_TOKEN_CHARS = set("0123456789abcdef")
ROOT = Path(__file__).resolve().parents[2]          # the repository: where `python -m engine` is found


def jobs_dir() -> Path:
    path = workspace.home() / "encoders" / ".jobs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def status_file(token: str) -> Path:
    if not isinstance(token, str) or len(token) != 12 or not set(token) <= _TOKEN_CHARS:
        raise UserError("That pre-training job is unknown; start it again.")
    return jobs_dir() / f"{token}.json"


def write_status(path: str | Path, **fields) -> None:
    """Replace the status file whole (temp file + rename), so a reader never sees half of it."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(fields, default=str))
    temp.replace(path)


def start(unlabeled_id: str, arch: str, mode: str, epochs: int, image_size: int, actor=None,
          batch_size: int = 16) -> str:
    """Launch the pre-training process; returns the token its status is read back by."""
    token = secrets.token_hex(6)
    path = status_file(token)
    write_status(path, state="starting", epochs=epochs, arch=arch, mode=mode, unlabeled_id=unlabeled_id)
    command = [sys.executable, "-m", "engine", *(["--as", actor.name] if actor is not None else []), "pretrain",
               "--unlabeled", unlabeled_id, "--arch", arch, "--mode", mode, "--epochs", str(int(epochs)),
               "--image-size", str(int(image_size)), "--batch-size", str(int(batch_size)),
               "--progress-file", str(path), "--json", "--quiet"]
    with open(path.with_suffix(".log"), "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    write_status(path, state="starting", epochs=epochs, arch=arch, mode=mode, unlabeled_id=unlabeled_id,
                 pid=process.pid)
    return token


def read_status(token: str) -> dict:
    """What the job last reported; a job whose process is gone without a last word is reported as failed."""
    path = status_file(token)
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"state": "failed", "message": "The pre-training job left no status; start it again."}
    if status.get("state") in ("starting", "running") and status.get("pid") and not _alive(status["pid"]):
        status.update(state="failed", message="The pre-training process stopped without finishing; see "
                                              f"{path.with_suffix('.log').name} in {path.parent} and start again.")
    return status


def _alive(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)     # our own child: reap it, or it lingers as a zombie
        if finished:
            return False
    except ChildProcessError:
        pass                                           # not our child (another server process started it)
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False
