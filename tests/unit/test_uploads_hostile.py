"""Hostile ZIPs and loose uploads (issue 13): zip bombs, a full disk, lying sizes, file/folder collisions and
over-long names. A bomb or a damaged archive is refused in one sentence; one unwritable entry is skipped and named."""
from __future__ import annotations

import errno
import io as bytes_io
import shutil
import struct
import zipfile
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.data import uploads
from engine.data.dataset import load_manifest
from engine.data.ingest import ingest, ingest_files
from engine.data.uploads import extract_zip, write_files
from engine.errors import UserError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

MB = 1024 ** 2
Usage = namedtuple("Usage", "total used free")


def png(seed: int) -> bytes:
    buffer = bytes_io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (24, 24), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def good_entries() -> list[tuple[str, bytes]]:
    return [(f"{cls}/{i}.png", png(10 * c + i)) for c, cls in enumerate(("cat", "dog")) for i in range(6)]


def make_zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


def problems_of(result, kind: str) -> list[dict]:
    return [p for p in result.report.problems if p["kind"] == kind]


def empty(folder: Path) -> bool:
    return not folder.exists() or not any(folder.rglob("*"))


# ---- zip bombs: compression ratio and free disk space ------------------------------------------------

def test_a_zip_bomb_entry_is_refused_by_its_compression_ratio(workspace, tmp_path, monkeypatch):
    """20 MB of zeros in ~20 KB (about 1000:1), hidden among real images: refused before anything is written.
    The floor is lowered for the test; by default only entries over 100 MB are held to the ratio."""
    monkeypatch.setattr(uploads, "RATIO_FLOOR_BYTES", 1 * MB)
    archive = make_zip(tmp_path / "bomb.zip", good_entries() + [("cat/zeros.dcm", bytes(20 * MB))])
    with pytest.raises(UserError) as refused:
        extract_zip(archive, tmp_path / "out")
    message = str(refused.value)
    assert "bomb.zip" in message and "cat/zeros.dcm" in message and "compressed" in message
    assert "21.0 MB" in message and "200:1" in message and "\n" not in message
    assert empty(tmp_path / "out")


def test_many_small_bomb_entries_are_refused_by_the_whole_archive_ratio(workspace, tmp_path, monkeypatch):
    """Each entry below the floor, the archive as a whole far above it (and above 200:1)."""
    monkeypatch.setattr(uploads, "RATIO_FLOOR_BYTES", 4 * MB)
    archive = make_zip(tmp_path / "many.zip", [(f"cat/{i}.dcm", bytes(MB)) for i in range(8)])
    with pytest.raises(UserError, match=r"many\.zip unpacks to 8\.4 MB from .* KB.*200:1"):
        extract_zip(archive, tmp_path / "out")
    assert empty(tmp_path / "out")


def test_a_highly_compressible_real_mask_volume_still_unpacks(workspace, tmp_path):
    """An uncompressed binary mask volume (6.5 MB, about 330:1) is real data: under the floor it passes."""
    z, y, x = np.ogrid[:100, :256, :256]
    volume = ((z - 50) ** 2 + (y - 128) ** 2 + (x - 128) ** 2 < 40 ** 2).astype(np.uint8)
    archive = make_zip(tmp_path / "volume.zip", [("masks/v.raw", volume.tobytes())])
    info = zipfile.ZipFile(archive).infolist()[0]
    assert info.file_size / info.compress_size > 200
    assert extract_zip(archive, tmp_path / "out") == []
    assert (tmp_path / "out" / "masks" / "v.raw").stat().st_size == volume.nbytes


def test_free_disk_space_is_checked_before_unpacking(workspace, tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "big.zip", good_entries() + [("cat/big.dcm", bytes(3 * MB))])
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 10**12 - 2 * MB, 2 * MB))
    with pytest.raises(UserError) as refused:
        extract_zip(archive, tmp_path / "out")
    message = str(refused.value)
    assert message.startswith("big.zip unpacks to 3.2 MB") and "2.1 MB" in message and "free" in message
    assert empty(tmp_path / "out")
    with pytest.raises(UserError, match="needs .* MB of disk space .* only 2.1 MB"):
        write_files([("cat/big.dcm", bytes(3 * MB))], tmp_path / "loose")
    assert empty(tmp_path / "loose")


def test_a_full_disk_while_unpacking_is_one_sentence(workspace, tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "pets.zip", good_entries())

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(shutil, "copyfileobj", full)
    with pytest.raises(UserError, match="pets.zip could not be unpacked: the disk is full"):
        extract_zip(archive, tmp_path / "out")


# ---- damaged archives: sizes that lie, passwords -----------------------------------------------------

def patch_header(archive: Path, name: str, field: str, value: int) -> None:
    """Overwrite a field of `name`'s local header and central directory record ('size' or 'flags')."""
    data = bytearray(archive.read_bytes())
    encoded = name.encode()
    for signature, name_at, offsets in ((b"PK\x03\x04", 30, {"flags": (6, "<H"), "size": (22, "<I")}),
                                        (b"PK\x01\x02", 46, {"flags": (8, "<H"), "size": (24, "<I")})):
        at = data.find(signature)
        while at >= 0:
            if data[at + name_at: at + name_at + len(encoded)] == encoded:
                offset, fmt = offsets[field]
                struct.pack_into(fmt, data, at + offset, value)
            at = data.find(signature, at + 4)
    archive.write_bytes(bytes(data))


def test_an_entry_whose_declared_size_lies_is_called_damaged_not_encrypted(workspace, tmp_path):
    """The entry inflates past its declared 100 bytes: zipfile stops there and the CRC fails."""
    archive = make_zip(tmp_path / "liar.zip", good_entries() + [("cat/liar.png", png(99) * 20)])
    patch_header(archive, "cat/liar.png", "size", 100)
    assert zipfile.ZipFile(archive).getinfo("cat/liar.png").file_size == 100
    with pytest.raises(UserError) as refused:
        ingest(archive, "classification")
    message = str(refused.value)
    assert "liar.zip" in message and "cat/liar.png" in message and "re-create" in message
    assert "damaged" in message and "password" not in message and "CRC" not in message


def test_an_encrypted_entry_asks_for_a_zip_without_password(workspace, tmp_path):
    archive = make_zip(tmp_path / "locked.zip", good_entries() + [("cat/locked.png", png(98))])
    patch_header(archive, "cat/locked.png", "flags", 0x1)                # 'encrypted' (the data is not)
    with pytest.raises(UserError, match="locked.zip.*cat/locked.png.*password"):
        ingest(archive, "classification")


# ---- entries that cannot be written: skipped and named, the rest ingested ---------------------------

@pytest.mark.parametrize("order", ["file first", "folder first"])
def test_a_file_and_a_folder_with_the_same_path_skip_the_file(workspace, tmp_path, order):
    clash = [("cat/x.png", png(90)), ("cat/x.png/y.png", png(91))]
    archive = make_zip(tmp_path / "clash.zip", good_entries() + (clash if order == "file first" else clash[::-1]))
    result = ingest(archive, "classification")
    skipped = problems_of(result, "skipped_entry")
    assert [p["file"] for p in skipped] == ["cat/x.png"]
    assert "both as a file and as a folder" in skipped[0]["message"] and "clash.zip" in skipped[0]["message"]
    assert result.report.samples == 13                                    # 12 + cat/x.png/y.png
    assert "cat/x.png/y.png" in {s["source"] for s in load_manifest(result.dataset_id)["samples"]}


def test_an_explicit_folder_entry_clashing_with_a_file(workspace, tmp_path):
    archive = make_zip(tmp_path / "dirs.zip", good_entries() + [("cat/z.png/", b""), ("cat/z.png", png(92))])
    result = ingest(archive, "classification")
    assert [p["file"] for p in problems_of(result, "skipped_entry")] == ["cat/z.png"]
    assert result.report.samples == 12


def test_over_long_names_are_skipped_and_named(workspace, tmp_path):
    long_file = "dog/" + "a" * 300 + ".png"
    long_folder = "cat/" + "é" * 130 + "/b.png"                          # 130 characters, 260 bytes
    archive = make_zip(tmp_path / "long.zip", good_entries() + [(long_file, png(93)), (long_folder, png(94))])
    result = ingest(archive, "classification")
    skipped = {p["file"]: p["message"] for p in problems_of(result, "skipped_entry")}
    assert set(skipped) == {long_file, long_folder}
    assert all("longer than" in m and "rename" in m and len(m) < 300 for m in skipped.values())
    assert result.report.samples == 12 and result.report.files_seen == 14


def test_loose_files_with_clashing_or_over_long_names_are_skipped_and_named(workspace, tmp_path):
    loose = [(f"pets/{name}", data) for name, data in good_entries()]
    loose += [("pets/cat/x.png", png(95)), ("pets/cat/x.png/y.png", png(96)), ("pets/dog/" + "b" * 256, png(97))]
    result = ingest_files(loose, "classification")
    skipped = sorted(p["file"] for p in problems_of(result, "skipped_entry"))
    assert skipped == ["pets/cat/x.png", "pets/dog/" + "b" * 256]
    assert result.report.samples == 13


def test_an_upload_whose_only_file_is_skipped_says_why(workspace, tmp_path):
    with pytest.raises(UserError, match="longer than"):
        ingest_files([("x" * 300 + ".zip", b"PK")], "classification")
