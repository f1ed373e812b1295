"""Uploads (a ZIP or loose files) unpacked into a folder, with every safety rule checked before anything is
written: no path may leave the folder, no symbolic links, and limits on file count and unpacked size."""
from __future__ import annotations

import re
import shutil
import stat
import zipfile
from pathlib import Path

from engine import workspace
from engine.data.layout import ignored
from engine.errors import UserError


def safe_parts(name: str, archive: str) -> list[str]:
    """Path parts of an upload entry; refuses absolute paths and '..' so nothing lands outside the folder."""
    clean = name.replace("\\", "/")
    parts = [p for p in clean.split("/") if p not in ("", ".")]
    if clean.startswith("/") or re.match(r"^[A-Za-z]:", clean) or ".." in parts:
        raise UserError(f"{archive} contains the path '{name}', which points outside the upload; it was refused.")
    return parts


def check_limits(count: int, size: int, archive: str) -> None:
    # Read at call time so a deployment (or a test) can change the limits after import
    if count > workspace.MAX_UPLOAD_FILES:
        raise UserError(f"{archive} holds {count} files, more than the limit of {workspace.MAX_UPLOAD_FILES}; "
                        f"split it or raise LIGHTBOX_MAX_UPLOAD_FILES.")
    if size > workspace.MAX_UPLOAD_BYTES:
        raise UserError(f"{archive} unpacks to {size / 1e6:.1f} MB, more than the limit of "
                        f"{workspace.MAX_UPLOAD_BYTES / 1e6:.1f} MB; split it or raise LIGHTBOX_MAX_UPLOAD_BYTES.")


def extract_zip(path: Path, dest: Path) -> None:
    """Check every entry of the archive, then extract it; zipfile never inflates past an entry's declared size."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise UserError(f"{path.name} is not a readable ZIP archive ({err}).") from err
    with archive:
        entries = archive.infolist()
        for entry in entries:
            if stat.S_ISLNK(entry.external_attr >> 16):
                raise UserError(f"{path.name} contains a symbolic link ('{entry.filename}'); "
                                f"zip the real files instead.")
            safe_parts(entry.filename, path.name)
        check_limits(len(entries), sum(e.file_size for e in entries), path.name)
        dest.mkdir(parents=True, exist_ok=True)
        for entry in entries:
            parts = safe_parts(entry.filename, path.name)
            if ignored(parts):
                continue
            target = dest.joinpath(*parts)
            if entry.is_dir():                 # kept, so an empty class folder is reported as such
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(entry) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            except (RuntimeError, NotImplementedError, zipfile.BadZipFile, EOFError) as err:
                raise UserError(f"{path.name} could not be unpacked at '{entry.filename}' ({err}); "
                                f"re-create the ZIP without a password.") from err


def write_files(files: list[tuple[str, bytes]], dest: Path) -> None:
    check_limits(len(files), sum(len(data) for _, data in files), "The upload")
    targets = [dest.joinpath(*safe_parts(name, "The upload")) for name, _ in files]   # all checked first
    for target, (_, data) in zip(targets, files):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
