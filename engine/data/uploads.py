"""Uploads (a ZIP or loose files) unpacked into a folder, with every safety rule checked before anything is
written: no path may leave the folder, no symbolic links, limits on file count, unpacked size and compression
ratio, and enough free disk. An entry the file system cannot hold (a name too long, a file and a folder with
one path) is skipped and returned as a problem for the ingest report; the rest of the upload is unpacked."""
from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import zipfile
import zlib
from functools import partial
from pathlib import Path

from engine import workspace
from engine.data.layout import ignored, problem
from engine.errors import UserError

# Zip bombs reach about 1000:1 (deflate's ceiling); DICOM and PNG images stay under ~10:1. Uncompressed mask
# volumes are the real data that comes close: a 6.5 MB binary sphere volume deflates ~330:1, a small blob in
# one ~980:1. So the ratio is only held against entries (and archives) that unpack to more than the floor:
# a bomb below it costs little, and the unpacked size and free disk checks still apply.
MAX_ZIP_RATIO = int(os.environ.get("LIGHTBOX_MAX_ZIP_RATIO", "200"))
RATIO_FLOOR_BYTES = 100 * 1024**2
# Free disk needed beyond the unpacked size: ingest writes the dataset's arrays next to the unpacked upload
DISK_MARGIN_BYTES = 100 * 1024**2
DISK_MARGIN_FRACTION = 0.1
NAME_MAX_BYTES = 255          # one file or folder name (Linux, macOS, Windows)
PATH_MAX_BYTES = 4000         # the whole path, a little under Linux's 4096

Plan = list[tuple[int, list[str]]]     # (index of the entry, its path parts) for the entries to write


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


def check_ratio(archive: Path, entries: list[zipfile.ZipInfo]) -> None:
    """Refuse a zip bomb by how much it inflates: any big entry, and the archive as a whole (many small bomb
    entries, or entries that share one compressed stream)."""
    for entry in entries:
        if entry.file_size > RATIO_FLOOR_BYTES and entry.file_size > MAX_ZIP_RATIO * max(entry.compress_size, 1):
            raise UserError(f"{archive.name} holds '{_shown(entry.filename)}', which unpacks to "
                            f"{_size(entry.file_size)} from {_size(entry.compress_size)} compressed, more than the "
                            f"{MAX_ZIP_RATIO}:1 a real image reaches (a zip bomb looks like this); re-create the ZIP "
                            f"from the real files, or raise LIGHTBOX_MAX_ZIP_RATIO.")
    total, packed = sum(e.file_size for e in entries), archive.stat().st_size
    if total > RATIO_FLOOR_BYTES and total > MAX_ZIP_RATIO * max(packed, 1):
        raise UserError(f"{archive.name} unpacks to {_size(total)} from {_size(packed)}, more than the "
                        f"{MAX_ZIP_RATIO}:1 real images reach (a zip bomb looks like this); re-create the ZIP from "
                        f"the real files, or raise LIGHTBOX_MAX_ZIP_RATIO.")


def check_disk(size: int, dest: Path, archive: str) -> None:
    """Refuse before writing when the disk cannot hold the unpacked upload (plus room for the dataset)."""
    where = next((p for p in (dest, *dest.parents) if p.exists()), Path("."))
    free = shutil.disk_usage(where).free
    need = size + int(size * DISK_MARGIN_FRACTION) + DISK_MARGIN_BYTES
    if need > free:
        raise UserError(f"{archive} unpacks to {_size(size)} and needs {_size(need)} of disk space with room for "
                        f"the dataset, but only {_size(free)} is free; free some space (delete old datasets or "
                        f"runs) or upload a smaller part.")


def extract_zip(path: Path, dest: Path) -> list[dict]:
    """Check every entry of the archive, then extract it; zipfile never inflates past an entry's declared size.

    Returns the entries skipped because the file system cannot hold them, as ingest report problems."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise UserError(f"{path.name} is not a readable ZIP archive (it is cut short, damaged or not a ZIP); "
                        f"re-create it and upload it again.") from err
    with archive:
        entries = archive.infolist()
        for entry in entries:
            if stat.S_ISLNK(entry.external_attr >> 16):
                raise UserError(f"{path.name} contains a symbolic link ('{entry.filename}'); "
                                f"zip the real files instead.")
            safe_parts(entry.filename, path.name)
        size = sum(e.file_size for e in entries)
        check_limits(len(entries), size, path.name)
        check_ratio(path, entries)
        check_disk(size, dest, path.name)
        plan, skipped = _plan([(e.filename, e.is_dir()) for e in entries], dest, path.name)
        dest.mkdir(parents=True, exist_ok=True)
        for index, parts in plan:
            entry = entries[index]
            if entry.is_dir():                 # kept, so an empty class folder is reported as such
                _write(dest, parts, entry.filename, path.name, skipped, None)
                continue
            if entry.flag_bits & 0x1:
                raise UserError(f"{path.name} could not be unpacked at '{_shown(entry.filename)}' because it is "
                                f"protected by a password; re-create the ZIP without a password.")
            _write(dest, parts, entry.filename, path.name, skipped, partial(_inflate, archive, entry, path.name))
    return skipped


def write_files(files: list[tuple[str, bytes]], dest: Path) -> list[dict]:
    """Write loose uploaded files under `dest`; returns the ones skipped (see extract_zip)."""
    size = sum(len(data) for _, data in files)
    check_limits(len(files), size, "The upload")
    plan, skipped = _plan([(name, False) for name, _ in files], dest, "The upload")   # all checked first
    check_disk(size, dest, "The upload")
    for index, parts in plan:
        name, data = files[index]
        _write(dest, parts, name, "The upload", skipped, partial(_put, data))
    return skipped


def _plan(names: list[tuple[str, bool]], dest: Path, archive: str) -> tuple[Plan, list[dict]]:
    """Which entries to write, and the ones the file system cannot hold, each named: a name over 255 bytes, and a
    file whose path is also a folder of other entries (the folder's files are kept)."""
    parts_of = [safe_parts(name, archive) for name, _ in names]
    folders = {tuple(parts[:i]) for (_, is_dir), parts in zip(names, parts_of)
               for i in range(1, len(parts) + (1 if is_dir else 0))}
    plan, skipped = [], []
    for index, ((name, is_dir), parts) in enumerate(zip(names, parts_of)):
        if not parts or ignored(parts):
            continue
        longest = max(len(p.encode()) for p in parts)
        if longest > NAME_MAX_BYTES or len(str(dest.joinpath(*parts)).encode()) > PATH_MAX_BYTES:
            what = (f"a file or folder name longer than the {NAME_MAX_BYTES} bytes a disk allows"
                    if longest > NAME_MAX_BYTES else f"a path longer than the {PATH_MAX_BYTES} bytes this disk allows")
            skipped.append(problem(name, "skipped_entry", f"'{_shown(name)}' in {archive} has {what}; it was "
                                                          f"skipped (rename it shorter to keep it)."))
        elif not is_dir and tuple(parts) in folders:
            skipped.append(problem(name, "skipped_entry",
                                   f"{archive} holds '{_shown(name)}' both as a file and as a folder; the file was "
                                   f"skipped (rename one of them to keep it)."))
        else:
            plan.append((index, parts))
    return plan, skipped


def _write(dest: Path, parts: list[str], name: str, archive: str, skipped: list[dict], fill) -> None:
    """Write one entry (a folder when `fill` is None). A full disk stops the upload; any other error of the file
    system (a clash with a folder, an odd name it refuses) skips this entry only."""
    target = dest.joinpath(*parts)
    try:
        if fill is None:
            target.mkdir(parents=True, exist_ok=True)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as out:
            fill(out)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"{archive} could not be unpacked: the disk is full (at '{_shown(name)}'); free some "
                            f"space (delete old datasets or runs) and try again.") from err
        if target.is_file():
            target.unlink()
        skipped.append(problem(name, "skipped_entry", f"'{_shown(name)}' in {archive} could not be written "
                                                      f"({err.strerror or type(err).__name__}); it was skipped."))


def _put(data: bytes, out) -> None:
    out.write(data)


def _inflate(archive: zipfile.ZipFile, entry: zipfile.ZipInfo, label: str, out) -> None:
    try:
        with archive.open(entry) as src:
            shutil.copyfileobj(src, out, 1 << 20)
    except NotImplementedError as err:         # e.g. Deflate64 or AES from 7-Zip and WinZip
        raise UserError(f"{label} could not be unpacked at '{_shown(entry.filename)}' because it uses a compression "
                        f"method Lightbox cannot read; re-create the ZIP with standard (Deflate) compression.") from err
    except (RuntimeError, zipfile.BadZipFile, EOFError, zlib.error) as err:
        # zipfile stops at the declared size, so data longer than declared fails its CRC check: not a password
        raise UserError(f"{label} is damaged or records wrong sizes at '{_shown(entry.filename)}' (it does not "
                        f"unpack to what the archive declares); re-create the ZIP and upload it again.") from err


def _shown(name: str, limit: int = 80) -> str:
    """A name short enough for one sentence: the start and the end of a very long one."""
    return name if len(name) <= limit else f"{name[: limit // 2]}…{name[-(limit // 2 - 1):]}"


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1_000_000 else f"{n / 1e3:.1f} KB"
