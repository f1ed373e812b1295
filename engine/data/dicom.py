"""DICOM pixel pipeline: decode, modality LUT, windowing, MONOCHROME1 inversion → float32 (C, H, W) in [0, 1]."""
from __future__ import annotations

import struct
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, convert_color_space, get_decoder, pixel_array
from pydicom.pixels.utils import get_expected_length

from engine import workspace
from engine.errors import UserError

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})
CHUNK = 1 << 22         # samples per step of the float64 steps (modality LUT, windowing): 32 MB of temporaries

# Which pip package brings the decoder for a compressed transfer syntax (by UID prefix).
_DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.5": ("JPEG", "pylibjpeg-libjpeg"),
    "1.2.840.10008.1.2.4.7": ("lossless JPEG", "pylibjpeg-libjpeg"),
    "1.2.840.10008.1.2.4.8": ("JPEG-LS", "pylibjpeg-libjpeg"),
    "1.2.840.10008.1.2.4.9": ("JPEG 2000", "pylibjpeg-openjpeg"),
    "1.2.840.10008.1.2.4.20": ("HTJ2K", "pylibjpeg-openjpeg"),
    "1.2.840.10008.1.2.5": ("RLE", "pylibjpeg-rle"),
}


class NotAnImage(UserError):
    """A readable file that holds no picture (a DICOM report, a structure set, a DICOMDIR)."""


def window_presets() -> dict[str, tuple[float, float]]:
    """Common CT windows as (center, width) in Hounsfield units."""
    return {
        "lung": (-600.0, 1500.0),
        "mediastinum": (40.0, 400.0),
        "soft tissue": (40.0, 400.0),
        "abdomen": (50.0, 350.0),
        "liver": (60.0, 160.0),
        "brain": (40.0, 80.0),
        "subdural": (75.0, 215.0),
        "bone": (400.0, 1800.0),
    }


def apply_window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Window modality values into [0, 1] with the DICOM VOI functions of PS3.3 C.11.2.1.2/C.11.2.1.3.

    LINEAR (the default): 0 where x <= c - 0.5 - (w-1)/2, 1 where x > c - 0.5 + (w-1)/2,
    else ((x - (c - 0.5)) / (w - 1) + 0.5). LINEAR_EXACT drops the half-unit offsets; SIGMOID is 1/(1+e^(-4(x-c)/w)).
    """
    return _in_chunks(values, lambda part: _window_part(part, center, width, (function or "LINEAR").upper()))


def _window_part(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if function == "SIGMOID":
        out = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    elif function == "LINEAR_EXACT":
        out = (x - center) / width + 0.5
    elif width <= 1:
        out = (x > center - 0.5).astype(np.float64)     # a width-1 window is a threshold (the formula divides by 0)
    else:
        out = (x - (center - 0.5)) / (width - 1) + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def read_dataset(source: Path | bytes, name: str = "") -> Dataset:
    """Parse a DICOM file (never with force=True, which turns garbage into an empty dataset)."""
    label = name or (source.name if isinstance(source, Path) else "upload")
    try:
        ds = pydicom.dcmread(BytesIO(source) if isinstance(source, bytes) else source)
    except InvalidDicomError as err:
        raise UserError(f"{label} is not a readable DICOM file "
                        f"(the DICOM header with its 'DICM' marker is missing).") from err
    except (EOFError, OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{label} is not a readable DICOM file ({_first_line(err)}).") from err
    if not any(k in ds for k in PIXEL_KEYWORDS):
        kind = ds.get("Modality") or "non-image"
        raise NotAnImage(f"{label} is a DICOM {kind} object without pixel data; only images can be used.")
    return ds


def dicom_frames(ds: Dataset, window: tuple[float, float] | None = None, name: str = "") -> list[np.ndarray]:
    """One float32 (C, H, W) array in [0, 1] per frame; an explicit (center, width) beats the file's own window."""
    label = name or Path(str(getattr(ds, "filename", "") or "DICOM file")).name
    raw = decode_pixels(ds, label)
    try:
        return _scale(raw, ds, window)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as err:   # broken LUTs or pixel modules
        raise UserError(f"{label} has pixel values that cannot be converted ({_first_line(err)}).") from err


def stored_type(ds: Dataset) -> str:
    """How samples are stored, e.g. 'int16' or 'uint8' (for the ingest report)."""
    if "PixelData" not in ds:
        return "float32" if "FloatPixelData" in ds else "float64"
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    return f"{'' if signed else 'u'}int{int(ds.get('BitsAllocated', 0) or 0)}"


def _scale(raw: np.ndarray, ds: Dataset, window: tuple[float, float] | None) -> list[np.ndarray]:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    colour = int(ds.get("SamplesPerPixel", 1) or 1) > 1 or photometric == "PALETTE COLOR"
    if raw.ndim == (3 if colour and photometric != "PALETTE COLOR" else 2):
        raw = raw[None]                          # a frame axis always, so both paths below are the same
    if colour:
        return [_to_rgb(frame, ds, photometric) for frame in raw]
    # One float32 stack and in-place steps: a large image costs its float32 size, not several float64 copies
    values = np.empty(raw.shape, np.float32)
    for i, frame in enumerate(raw):
        values[i] = _rescale(frame, ds, i)
    windows = [_frame_item(ds, i, "FrameVOILUTSequence") for i in range(len(raw))]
    if window is None and all(w is not None and _first(w.get("WindowCenter")) is not None
                              and (_first(w.get("WindowWidth")) or 0) > 0 for w in windows):
        # Enhanced multi-frame files keep each frame's window in its functional groups, not at the top level
        for i, w in enumerate(windows):
            values[i] = _window(values[i][None], w, None)[0]
        scaled = values
    else:
        scaled = _window(values, ds, window)
    if photometric == "MONOCHROME1":
        np.subtract(1.0, scaled, out=scaled)     # pydicom leaves MONOCHROME1 as stored: low values are white
    return [f[None] for f in scaled]


def patient_id(ds: Dataset) -> str | None:
    """PatientID as text, or None when absent or blank (used to keep a patient in one split)."""
    value = str(ds.get("PatientID", "") or "").strip()
    return value or None


def header_summary(ds: Dataset, max_len: int = 80) -> list[tuple[str, str, str]]:
    """(tag, keyword, value) rows for display; pixel data and long binary values are summarised."""
    rows = []
    meta = list(ds.file_meta) if hasattr(ds, "file_meta") else []
    for elem in [*meta, *ds]:
        if elem.keyword in PIXEL_KEYWORDS or ((elem.tag.group & 0xFF00) == 0x6000 and elem.tag.element == 0x3000):
            continue                             # pixel and overlay bytes are images, not header text
        tag = f"({elem.tag.group:04X},{elem.tag.element:04X})"
        if elem.VR == "SQ":
            value = f"<sequence of {len(elem.value)} item(s)>"
        elif elem.VR in ("OB", "OW", "OD", "OF", "OL", "OV", "UN") or isinstance(elem.value, bytes):
            value = f"<{len(elem.value or b'')} bytes>"
        else:
            value = str(elem.value)
        if len(value) > max_len:
            value = value[: max_len - 1] + "…"
        rows.append((tag, elem.keyword or "(private)", value))
    return rows


def megapixels(pixels: int) -> str:
    """A pixel count in megapixels as a person would write it: 3,600 / 169 / 8.4 / 0.01."""
    mp = pixels / 1e6
    return f"{mp:,.0f}" if mp >= 10 else f"{mp:.1f}" if mp >= 1 else f"{mp:.2g}"


def check_pixel_count(label: str, width: int, height: int, frames: int = 1, total: int | None = None) -> None:
    """Refuse an image (any format) whose header claims more pixels, frames included, than
    workspace.MAX_IMAGE_PIXELS, before anything is decoded: a small file can claim a huge picture."""
    limit = workspace.MAX_IMAGE_PIXELS
    total = width * height * frames if total is None else total
    if total <= limit:
        return
    size = f"{width}×{height} pixels"
    what = f"is {size}" if frames == 1 else f"holds {frames} frames of {size}"
    raise UserError(f"{label} {what} ({megapixels(total)} megapixels{' in all' if frames > 1 else ''}), more "
                    f"than the limit of {megapixels(limit)} megapixels per file; use a smaller image or raise "
                    "LIGHTBOX_MAX_IMAGE_PIXELS.")


def check_pixel_data(ds: Dataset, label: str) -> None:
    """From the header alone, refuse pixel data too large to decode or unlike its own description (a 744-byte
    file that claims 60000×60000 pixels; a header that promises more bytes than the file holds)."""
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.get("BitsAllocated", 0) or 0)
    except (AttributeError, TypeError, ValueError, OverflowError) as err:
        raise UserError(f"{label} has an image header that cannot be read (Rows, Columns, Number of Frames, "
                        "Samples per Pixel or Bits Allocated is missing or not a number); export the image "
                        "again.") from err
    if min(rows, columns, frames) < 1 or samples not in (1, 3) or not (bits == 1 or bits in range(8, 65, 8)):
        raise UserError(f"{label} describes an impossible image ({columns}×{rows} pixels, {frames} frame(s), "
                        f"{samples} sample(s) of {bits} bits); export the image again.")
    check_pixel_count(label, columns, rows, frames)
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    keyword = next(k for k in PIXEL_KEYWORDS if k in ds)
    if syntax is not None and syntax.is_compressed:
        _check_frame_sizes(ds, label, columns, rows, frames)
        return
    try:
        expected = get_expected_length(ds, unit="bytes")
    except (AttributeError, TypeError, ValueError, KeyError) as err:
        raise UserError(f"{label} has an image header that cannot be read ({_first_line(err)}); "
                        "export the image again.") from err
    held = len(ds[keyword].value or b"")
    if held < expected:
        raise UserError(f"{label} has pixel data that cannot be decoded: its header declares {columns}×{rows} "
                        f"pixels × {frames} frame(s) ({expected:,} bytes) but the file holds {held:,} bytes, so it "
                        "is truncated or damaged.")


def _check_frame_sizes(ds: Dataset, label: str, columns: int, rows: int, frames: int) -> None:
    """Each compressed frame's own size (JPEG frame header, JPEG 2000 SIZ) must be the header's: a decoder
    allocates what the codestream claims, so a 100×100 DICOM holding a JPEG that claims 30000×30000 would
    take 10 GB before the mismatch is noticed."""
    try:
        claims = [_codestream_size(frame) for frame in generate_frames(ds.PixelData, number_of_frames=frames)]
    except Exception:  # noqa: BLE001 - broken encapsulation: the decoder's own error says so below
        return
    for claim in claims:
        if claim is not None and claim != (columns, rows):
            raise UserError(f"{label} declares {columns}×{rows} pixels but holds a compressed frame of "
                            f"{claim[0]}×{claim[1]}; the file is damaged, so it was not decoded.")


def _codestream_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG / JPEG-LS frame header or a JPEG 2000 SIZ segment; None when not found."""
    if frame[:4] == b"\xff\x4f\xff\x51" and len(frame) >= 24:        # J2K: SOC then SIZ
        xsiz, ysiz, xosiz, yosiz = struct.unpack(">4I", frame[8:24])
        return xsiz - xosiz, ysiz - yosiz
    if frame[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(frame) and frame[i] == 0xFF:
        marker = frame[i + 1]
        if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD7:     # fill byte or standalone marker
            i += 1 if marker == 0xFF else 2
            continue
        if marker == 0xDA:                                                 # start of scan: no frame header
            return None
        length = int.from_bytes(frame[i + 2:i + 4], "big")
        if marker in SOF_MARKERS and i + 9 <= len(frame):
            height, width = struct.unpack(">HH", frame[i + 5:i + 9])
            return (width, height) if height else None                     # height 0: given later (DNL)
        i += 2 + length
    return None


def decode_pixels(ds: Dataset, label: str, raw: bool = True) -> np.ndarray:
    """The stored pixel array, once the header passed check_pixel_data; any decoder failure is one sentence."""
    check_pixel_data(ds, label)
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is not None and syntax.is_compressed:
        _require_decoder(str(syntax), syntax.name, label)
    try:
        # raw=True keeps the stored colour space, so the YBR → RGB step below is explicit and testable
        return pixel_array(ds, raw=raw)
    except Exception as err:  # decoders raise many types (ValueError, RuntimeError, plugin errors)
        raise UserError(f"{label} has pixel data that cannot be decoded ({_first_line(err)}).") from err


def _require_decoder(uid: str, syntax_name: str, label: str) -> None:
    try:
        available = get_decoder(uid).is_available
    except NotImplementedError:
        available = False
    if available:
        return
    kind, package = next(((k, p) for prefix, (k, p) in _DECODER_PACKAGES.items() if uid.startswith(prefix)),
                         (syntax_name, None))
    need = f"which needs the '{package}' package" if package else "which no installed decoder supports"
    raise UserError(f"{label} uses {kind} compression ({syntax_name}), {need}.")


def _to_rgb(frame: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    """One stored colour frame → float32 (3, H, W) in [0, 1], filled channel by channel."""
    if photometric == "PALETTE COLOR":
        frame = apply_color_lut(frame, ds)
        top = np.iinfo(frame.dtype).max
    else:
        if photometric in ("YBR_FULL", "YBR_FULL_422"):
            frame = convert_color_space(frame, photometric, "RGB")
        # YBR_RCT/ICT come out of the JPEG 2000 decoder already as RGB
        top = 2 ** int(ds.get("BitsStored", 8) or 8) - 1
    out = np.empty((3, *frame.shape[:2]), np.float32)
    for channel in range(3):
        out[channel] = frame[..., channel]
    np.divide(out, top, out=out)
    return np.clip(out, 0.0, 1.0, out=out)


def _frame_item(ds: Dataset, index: int, keyword: str) -> Dataset | None:
    """A functional-group macro (e.g. PixelValueTransformationSequence) of one frame of an enhanced multi-frame
    file: the frame's own value, else the shared one; None for classic files, which keep these at the top."""
    groups = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and index < len(per_frame):
        groups.append(per_frame[index])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    for group in groups:
        sequence = group.get(keyword)
        if sequence:
            return sequence[0]
    return None


def _rescale(frame: np.ndarray, ds: Dataset, index: int) -> np.ndarray:
    """Stored values → modality values (e.g. Hounsfield units), with the frame's own slope and intercept."""
    item = _frame_item(ds, index, "PixelValueTransformationSequence")
    if item is not None and "RescaleSlope" in item and "RescaleIntercept" in item:
        slope, intercept = float(item.RescaleSlope), float(item.RescaleIntercept)
        return _in_chunks(frame, lambda part: part.astype(np.float32) * slope + intercept)
    return _in_chunks(frame, lambda part: apply_modality_lut(part, ds))


def _window(values: np.ndarray, ds: Dataset, window: tuple[float, float] | None) -> np.ndarray:
    """Modality values → [0, 1], in place: `values` is a float32 array of the caller's own (memory stays one
    float32 copy of the image)."""
    if window is not None:
        return _in_chunks(values, lambda part: _window_part(part, *window, "LINEAR"), out=values)
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
        function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
        return _in_chunks(values, lambda part: _window_part(part, center, width, function), out=values)
    if ds.get("VOILUTSequence"):
        return _voi_lut(values, ds)
    # No window in the file: stretch the whole series (not each frame) so slices stay comparable
    low, high = float(values.min()), float(values.max())
    if high <= low:
        values[...] = 0.0
        return values
    np.subtract(values, low, out=values)
    return np.divide(values, high - low, out=values)


def _voi_lut(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """First VOI LUT of the file, scaled to [0, 1]. Done here because pydicom 3.0's apply_voi offsets inputs in
    the LUT's own dtype, so with an 8-bit LUT an input 256 above the first mapped value wraps to entry 0."""
    item = ds.VOILUTSequence[0]
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    data = item.LUTData
    if isinstance(data, bytes):           # OW: raw 16-bit words in the file's byte order
        little = (getattr(ds, "original_encoding", None) or (None, True))[1] is not False
        lut = np.frombuffer(data, dtype="<u2" if little else ">u2").astype(np.float32)
    else:
        lut = np.asarray(data if isinstance(data, (list, pydicom.multival.MultiValue)) else [data], np.float32)
    last = min(entries or 65536, len(lut)) - 1

    def lookup(part: np.ndarray) -> np.ndarray:
        index = np.clip(np.round(part) - first, 0, last).astype(np.int64)
        return np.clip(lut[index] / (2**bits - 1), 0.0, 1.0)
    return _in_chunks(values, lookup, out=values)


def _in_chunks(values: np.ndarray, step, out: np.ndarray | None = None) -> np.ndarray:
    """float32 result of an element-wise `step`, run on CHUNK samples at a time so its float64 or int64
    temporaries stay small whatever the image size (the numbers are those of one call on the whole array).
    `out` may be `values` itself: each chunk is read whole before its result is written back."""
    values = np.asarray(values)
    if out is not None and not out.flags.c_contiguous:        # reshape would copy, and the writes be lost
        out[...] = _in_chunks(values, step)
        return out
    out = np.empty(values.shape, np.float32) if out is None else out
    flat_in, flat_out = values.reshape(-1), out.reshape(-1)
    for start in range(0, flat_in.size, CHUNK):
        flat_out[start:start + CHUNK] = step(flat_in[start:start + CHUNK])
    return out


def _first(value) -> float | None:
    """First value of a possibly multi-valued DS element."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return float(value[0]) if len(value) else None
    return float(value)


def _first_line(err: Exception) -> str:
    """The gist of an exception message; pydicom lists plugin errors on the lines after a colon."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    return f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
