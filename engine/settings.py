"""Where Lightbox keeps things: the workspace folder and the database URL (read from the environment)."""
from __future__ import annotations

import os
import secrets
import time
from pathlib import Path


def home() -> Path:
    """The workspace folder (LIGHTBOX_HOME, default ./workspace), created on first use."""
    path = Path(os.environ.get("LIGHTBOX_HOME", "workspace")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def datasets_dir() -> Path:
    path = home() / "datasets"
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir() -> Path:
    path = home() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def secret_key() -> bytes:
    """A random key made once per workspace (file .key, readable by its owner only); it turns DICOM PatientIDs
    into pseudonyms that cannot be reversed without it."""
    path = home() / ".key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):            # another process may be writing it this very moment
            key = path.read_bytes()
            if len(key) == 32:
                return key
            time.sleep(0.01)
        raise RuntimeError(f"{path} is damaged; delete it (existing datasets keep their pseudonyms).")
    key = secrets.token_bytes(32)
    with os.fdopen(fd, "wb") as out:
        out.write(key)
    return key


def db_url() -> str:
    """LIGHTBOX_DB_URL, or a SQLite file inside the workspace."""
    return os.environ.get("LIGHTBOX_DB_URL") or f"sqlite:///{home() / 'lightbox.db'}"


# Defensive limits for uploads (bytes / file count); overridable for big local datasets.
MAX_UPLOAD_BYTES = int(os.environ.get("LIGHTBOX_MAX_UPLOAD_BYTES", 4 * 1024**3))
MAX_UPLOAD_FILES = int(os.environ.get("LIGHTBOX_MAX_UPLOAD_FILES", 200_000))
