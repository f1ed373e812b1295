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


def jpeg_in_dicom(width: int, height: int) -> bytes:
    """pydicom's 100×100 JPEG test DICOM whose embedded JPEG claims width × height (the header still says 100²)."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.encaps import encapsulate, generate_frames
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm", download=False))
    (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
    ds.PixelData = encapsulate([jpeg_with_size(frame, width, height)])
    buffer = BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def small_png(seed: int, size: int = 32, mode: str = "L") -> bytes:
    from PIL import Image
    rng = np.random.default_rng(seed)
    shape = (size, size) if mode == "L" else (size, size, 3)
    buffer = BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


BOMBS = {
    "none": lambda: [],                      # the 8 good images alone: the baseline
    "rgb-png": lambda: [("a/bomb.png", zero_png(13000, 13000, "RGB"))],
    "grey-png": lambda: [("a/bomb.png", zero_png(13000, 13000, "L"))],
    "two-rgb-png": lambda: [("a/bomb1.png", zero_png(13000, 13000, "RGB")),
                            ("b/bomb2.png", zero_png(13000, 13000, "RGB"))],
    "rle-dicom": lambda: [("a/bomb.dcm", rle_dicom(60000, 60000))],
    "jpeg-in-dicom": lambda: [("a/inner.dcm", jpeg_in_dicom(30000, 30000))],
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


# ---- malformed files for the fuzz test (tests/unit/test_fuzz_inputs.py) ----------------------------------

DICOM_SEEDS = ("CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "MR_small_bigendian.dcm",
               "rtdose.dcm", "SC_rgb_rle_2frame.dcm", "MR_small_jpeg_ls_lossless.dcm", "SC_rgb_jpeg_dcmtk.dcm")
# (keyword, lies): values a damaged or hostile header could hold
DICOM_LIES = (("Rows", (0, 1, 65535)), ("Columns", (0, 3, 65535)), ("NumberOfFrames", ("0", "-4", "70000", "2")),
              ("BitsAllocated", (0, 7, 12, 48, 64)), ("SamplesPerPixel", (0, 2, 3, 200)),
              ("BitsStored", (0, 40)), ("HighBit", (0, 63)), ("PixelRepresentation", (1, 7)),
              ("PhotometricInterpretation", ("RGB", "PALETTE COLOR", "YBR_FULL_422", "MONOCHROME1")),
              ("RescaleSlope", ("0", "1e308")), ("WindowWidth", ("0", "-5")))


def _save(array: np.ndarray, fmt: str, **options) -> bytes:
    from PIL import Image
    buffer = BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def image_seeds() -> dict[str, bytes]:
    """Small valid files of every Pillow format ingest reads, 48×40 px."""
    from PIL import Image
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (40, 48), dtype=np.uint8)
    rgb = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    pages = BytesIO()
    Image.fromarray(grey).save(pages, format="TIFF", save_all=True, append_images=[Image.fromarray(grey[::-1])])
    return {"grey.png": _save(grey, "PNG"), "rgb.png": _save(rgb, "PNG"),
            "wide.png": _save(grey.astype(np.uint16) * 200, "PNG"), "grey.jpg": _save(grey, "JPEG"),
            "rgb.jpg": _save(rgb, "JPEG"), "pages.tif": pages.getvalue(), "grey.bmp": _save(grey, "BMP")}


def dicom_seeds() -> dict[str, bytes]:
    """pydicom's own test files (bundled with it: no download)."""
    from pydicom.data import get_testdata_file
    return {name: Path(get_testdata_file(name, download=False)).read_bytes() for name in DICOM_SEEDS}


def _flip(data: bytes, rng: np.random.Generator, bits: int, start: int = 0, stop: int | None = None) -> bytes:
    out = bytearray(data)
    stop = min(stop or len(out), len(out))
    for position in rng.integers(start, stop, bits):
        out[position] ^= 1 << int(rng.integers(0, 8))
    return bytes(out)


def _dicom_lie(data: bytes, keyword: str, value) -> bytes | None:
    import pydicom
    ds = pydicom.dcmread(BytesIO(data))
    try:
        setattr(ds, keyword, value)
        buffer = BytesIO()
        ds.save_as(buffer)
    except Exception:  # noqa: BLE001 - a lie pydicom cannot even write is no test case
        return None
    return buffer.getvalue()


def _short_pixels(data: bytes) -> bytes:
    import pydicom
    ds = pydicom.dcmread(BytesIO(data))
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3 & ~1]
    buffer = BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def fuzz_files(seed: int = 13) -> list[tuple[str, bytes]]:
    """Deterministic malformed PNG/JPEG/TIFF/BMP/DICOM files: truncated, bit-flipped (anywhere and in the
    header), sizes patched huge or merely large, and DICOM header lies. Names say what was done."""
    rng = np.random.default_rng(seed)
    cases: list[tuple[str, bytes]] = []
    for name, data in {**image_seeds(), **dicom_seeds()}.items():
        stem, ext = name.rsplit(".", 1)
        header = (128, 900) if ext == "dcm" else (0, 64)
        cases += [(f"{stem}-cut{k}.{ext}", data[: int(rng.integers(8, len(data) - 1))]) for k in range(2)]
        cases += [(f"{stem}-flip{k}.{ext}", _flip(data, rng, int(rng.integers(1, 9)))) for k in range(2)]
        cases.append((f"{stem}-headflip.{ext}", _flip(data, rng, 3, *header)))
    images = image_seeds()
    for width, height in ((40000, 40000), (9000, 8000), (3000, 2000), (1, 65535)):
        cases.append((f"png-size-{width}x{height}.png", png_with_size(images["grey.png"], width, height)))
        cases.append((f"jpg-size-{width}x{height}.jpg", jpeg_with_size(images["rgb.jpg"], width, height)))
    dicoms = dicom_seeds()
    for keyword, lies in DICOM_LIES:
        for value in lies:
            name = DICOM_SEEDS[int(rng.integers(0, len(DICOM_SEEDS)))]
            lied = _dicom_lie(dicoms[name], keyword, value)
            if lied is not None:
                cases.append((f"{name[:-4]}-{keyword}-{value}.dcm".replace(" ", "_"), lied))
    cases += [(f"{name[:-4]}-short.dcm", _short_pixels(dicoms[name])) for name in ("CT_small.dcm", "rtdose.dcm")]
    cases.append(("rle-60000.dcm", rle_dicom(60000, 60000)))
    cases.append(("rle-frames.dcm", rle_dicom(64, 64, frames=3)[:-40]))
    return cases


def fuzz_zips(seed: int = 13) -> list[tuple[str, bytes]]:
    """Malformed ZIP uploads of a small valid classification set: truncated (central directory cut), bit-flipped
    entries, lying sizes in the central directory, an empty archive and garbage."""
    import zipfile
    rng = np.random.default_rng(seed)
    buffer = BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for k, c in enumerate("ab"):
            for i in range(4):
                archive.writestr(f"set/{c}/img{i}.png", small_png(10 * k + i))
    good = buffer.getvalue()
    directory = good.rfind(b"PK\x01\x02", 0, good.rfind(b"PK\x05\x06"))
    cases = [("cut-directory.zip", good[: len(good) - 30]), ("cut-half.zip", good[: len(good) // 2]),
             ("cut-end.zip", good[:-3]), ("no-directory.zip", good[: good.find(b"PK\x01\x02")]),
             ("empty.zip", b"PK\x05\x06" + bytes(18)), ("garbage.zip", bytes(rng.integers(0, 256, 300, np.uint8)))]
    cases += [(f"flip{k}.zip", _flip(good, rng, int(rng.integers(1, 6)))) for k in range(4)]
    cases.append(("flip-entry.zip", _flip(good, rng, 4, 40, 400)))
    lying = bytearray(good)
    first_entry = good.find(b"PK\x01\x02")
    lying[first_entry + 24:first_entry + 28] = struct.pack("<I", 2**31)        # uncompressed size: 2 GB
    cases.append(("lying-size.zip", bytes(lying)))
    assert directory > 0
    return cases
