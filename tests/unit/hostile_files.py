"""Hostile image files made on the fly (decompression bombs, lying headers) for the hardening tests and for
benchmarks/hostile.md. Nothing here needs the engine; every generator is deterministic."""
from __future__ import annotations

import struct
import sys
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def zero_png(width: int, height: int, mode: str = "RGB") -> bytes:
    """An all-zero 8-bit PNG ("RGB" or "L"): 13000² RGB is 0.5 MB on disk and 507 MB of pixels, made in well
    under a second without ever holding the pixels."""
    channels = {"RGB": 3, "L": 1}[mode]
    header = struct.pack(">IIBBBBB", width, height, 8, 2 if mode == "RGB" else 0, 0, 0, 0)
    row_bytes = 1 + width * channels          # filter byte 0 + a row of zeros
    return (PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", _deflate_zeros(row_bytes * height))
            + _chunk(b"IEND", b""))


def _deflate_zeros(size: int, block: int = 1 << 22) -> bytes:
    """A zlib stream of `size` zero bytes. After a full flush deflate forgets its history, so every further
    block of zeros compresses to the same bytes: compress two, repeat the second."""
    packer = zlib.compressobj(9)
    blocks, rest = divmod(size, block)
    parts = [packer.compress(bytes(block)) + packer.flush(zlib.Z_FULL_FLUSH) for _ in range(min(blocks, 2))]
    parts += parts[-1:] * (blocks - 2)
    if rest:
        parts.append(packer.compress(bytes(rest)) + packer.flush(zlib.Z_FULL_FLUSH))
    parts = parts or [packer.compress(b"") + packer.flush(zlib.Z_FULL_FLUSH)]
    adler = ((size % 65521) << 16) | 1        # Adler-32 of zeros: a = 1, b = size (mod 65521)
    return b"".join(parts) + b"\x03\x00" + struct.pack(">I", adler)     # empty final block, checksum


def png_with_size(data: bytes, width: int, height: int) -> bytes:
    """A PNG whose IHDR claims another size (checksum fixed, so only the size lies)."""
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    body = struct.pack(">II", width, height) + data[24:29]
    return data[:8] + _chunk(b"IHDR", body) + data[33:]


def jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """A JPEG whose frame header (SOF0/1/2) claims another size."""
    out = bytearray(data)
    i = 2
    while i + 4 < len(out):
        marker, length = out[i + 1], struct.unpack(">H", out[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            out[i + 5:i + 9] = struct.pack(">HH", height, width)
            return bytes(out)
        i += 2 + length
    raise ValueError("no SOF marker")


def rle_dicom(rows: int, columns: int, frames: int = 1, bits: int = 16) -> bytes:
    """A tiny RLE Lossless DICOM (under 1 KB) whose header claims rows × columns × frames pixels."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    segments = bits // 8
    run = b"\x81\x00"                               # PackBits: 128 zero bytes
    offsets = [64 + k * len(run) for k in range(segments)]
    frame = struct.pack("<16I", segments, *offsets, *[0] * (15 - segments)) + run * segments
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["hostile", str(rows), str(columns)])
    meta.TransferSyntaxUID = RLE_LOSSLESS
    meta.ImplementationClassUID = generate_uid(entropy_srcs=["lightbox-tests"])
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "OT", "HOSTILE"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = encapsulate([frame] * frames)
    ds["PixelData"].VR = "OB"
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def small_png(seed: int, size: int = 32, mode: str = "L") -> bytes:
    from PIL import Image
    rng = np.random.default_rng(seed)
    shape = (size, size) if mode == "L" else (size, size, 3)
    buffer = BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


BOMBS = {
    "rgb-png": lambda: [("a/bomb.png", zero_png(13000, 13000, "RGB"))],
    "grey-png": lambda: [("a/bomb.png", zero_png(13000, 13000, "L"))],
    "two-rgb-png": lambda: [("a/bomb1.png", zero_png(13000, 13000, "RGB")),
                            ("b/bomb2.png", zero_png(13000, 13000, "RGB"))],
    "rle-dicom": lambda: [("a/bomb.dcm", rle_dicom(60000, 60000))],
}


def write_upload(folder: Path, case: str) -> Path:
    """A classification upload (classes a/ and b/, 4 good images each) plus the bomb files of `case`."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [(f"{c}/ok{i}.png", small_png(10 * k + i)) for k, c in enumerate("ab") for i in range(4)]
    for name, data in files + BOMBS[case]():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return folder


if __name__ == "__main__":          # python tests/unit/hostile_files.py CASE FOLDER
    print(write_upload(Path(sys.argv[2]), sys.argv[1]))
