"""Where Lightbox keeps things: the workspace folder and the database URL (read from the environment)."""
from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from engine.errors import UserError


def home() -> Path:
    """The workspace folder (LIGHTBOX_HOME, default ./workspace), created on first use."""
    path = Path(os.environ.get("LIGHTBOX_HOME", "workspace")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A temporary folder inside the workspace (same disk, so a final rename into place is atomic), removed
    afterwards whatever happens."""
    root = home() / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


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
    if not path.exists():
        # Written whole to a private temporary file, then linked into place: a crash never leaves a half key,
        # and when two processes race, the first link wins and both read the same key.
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".key-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(secrets.token_bytes(32))
            try:
                os.link(temp, path)
            except FileExistsError:
                pass
        finally:
            os.unlink(temp)
    key = path.read_bytes()
    if len(key) != 32:
        raise UserError(f"{path} is damaged; delete it and try again (datasets made before keep their pseudonyms).")
    return key


def db_url() -> str:
    """LIGHTBOX_DB_URL, or a SQLite file inside the workspace."""
    return os.environ.get("LIGHTBOX_DB_URL") or f"sqlite:///{home() / 'lightbox.db'}"


# Defensive limits for uploads (bytes / file count); overridable for big local datasets.
MAX_UPLOAD_BYTES = int(os.environ.get("LIGHTBOX_MAX_UPLOAD_BYTES", 4 * 1024**3))
MAX_UPLOAD_FILES = int(os.environ.get("LIGHTBOX_MAX_UPLOAD_FILES", 200_000))

# Pixels one image file may decode to (width × height × frames), checked from its header before decoding: a
# small file can claim a huge picture (a decompression bomb). 64 MP is far above any CT, MR or X-ray (a chest
# X-ray is ~9 MP, a mammogram ~20 MP) and bounds one decode to ~1.2 GB (an RGB image as float32 plus Pillow's copy).
MAX_IMAGE_PIXELS = int(os.environ.get("LIGHTBOX_MAX_IMAGE_PIXELS", 64_000_000))
