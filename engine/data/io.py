"""Read one image or mask file (PNG/JPEG/TIFF/BMP through Pillow, DICOM through pydicom) into numpy arrays."""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

from engine import workspace
from engine.data import dicom
from engine.errors import UserError

DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
SUPPORTED_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}) | DICOM_EXTENSIONS
MAX_LABEL = 63          # masks hold class indices 0..MAX_LABEL, or 0/255 for binary
MAX_GREY_LEVELS = 16    # ... or this many grey levels at most (0/85/170/255 and the like), mapped to 0, 1, 2, …
MIN_LEVEL_GAP = 8       # grey levels closer than this are smearing (JPEG, resizing), not classes
ORIENTATION_TAG = 0x0112  # EXIF Orientation
GREY_MODES = ("1", "L", "LA", "P", "PA")
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")

# Our own limit (workspace.MAX_IMAGE_PIXELS, frames included) is checked from the header before any decode, so
# Pillow's warning for pictures above its default limit would only repeat it on stderr.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class LabelRangeError(UserError):
    """A mask whose values are neither 0/255 nor class indices 0..MAX_LABEL."""


@dataclass
class Decoded:
    """A decoded image file: frames plus what the ingest report and the splits need."""
    frames: list[np.ndarray]            # float32 (C, H, W) in [0, 1]
    dtype: str                          # stored sample type, e.g. "uint8", "uint16", "int16"
    patient: str | None = None
    modality: str | None = None
    manufacturer: str | None = None     # DICOM Manufacturer: a scanner that only one class comes from is a shortcut


def is_dicom(source: Path | bytes, name: str = "") -> bool:
    """True for a .dcm/.dicom name or for the 'DICM' magic at byte 128 (files without extension)."""
    suffix = Path(name or (source.name if isinstance(source, Path) else "")).suffix.lower()
    if suffix in DICOM_EXTENSIONS:
        return True
    if isinstance(source, bytes):
        return source[128:132] == b"DICM"
    try:
        with open(source, "rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def is_supported(path: Path) -> bool:
    """Whether ingest should try to read this file as an image."""
    return path.suffix.lower() in SUPPORTED_EXTENSIONS or is_dicom(path)


def read_image(source: Path | bytes, name: str = "", window: tuple[float, float] | None = None) -> list[np.ndarray]:
    """float32 (C, H, W) arrays in [0, 1], one per frame (a single element for ordinary images)."""
    return decode_file(source, name, window).frames


def decode_file(source: Path | bytes, name: str = "", window: tuple[float, float] | None = None) -> Decoded:
    """Decode an image file with its metadata; raises UserError with one sentence when it cannot."""
    label = _label(source, name)
    if is_dicom(source, name):
        ds = dicom.read_dataset(source, label)
        frames = dicom.dicom_frames(ds, window, label)
        return Decoded(frames, dicom.stored_type(ds), dicom.patient_id(ds), _text(ds, "Modality"),
                       _text(ds, "Manufacturer"))
    frames, stored = [], ""
    for page in _pages(_open(source, label), label):
        array, stored = _pil_to_array(page)
        frames.append(array)
    return Decoded(frames, stored)


def read_mask(source: Path | bytes, name: str = "") -> np.ndarray:
    """uint8 (H, W) label map as stored (0/255 is not yet converted: see normalise_labels)."""
    frames = read_mask_frames(source, name)
    if len(frames) != 1:
        raise UserError(f"{_label(source, name)} holds {len(frames)} frames; a mask here must hold one.")
    return frames[0]


def read_mask_frames(source: Path | bytes, name: str = "") -> list[np.ndarray]:
    """uint8 (H, W) label maps, one per frame (multi-page TIFF and multi-frame DICOM masks)."""
    label = _label(source, name)
    if is_dicom(source, name):
        ds = dicom.read_dataset(source, label)
        stack = dicom.decode_pixels(ds, label, raw=False)
        stack = stack[None] if int(ds.get("NumberOfFrames", 1) or 1) == 1 else stack
        return [_as_labels(f, label) for f in stack]
    return [_as_labels(_mask_page(page, label), label) for page in _pages(_open(source, label), label)]


def normalise_labels(mask: np.ndarray, name: str = "mask", levels: dict | None = None) -> np.ndarray:
    """0/255 binary masks become 0/1; class indices 0..MAX_LABEL pass; anything else raises LabelRangeError.

    `levels` (stored value → class, from a dataset's manifest) first maps masks saved as grey levels
    (e.g. 0/85/170/255). Values are not required to be consecutive in one mask, since a slice may miss a class.
    """
    values = np.unique(mask)
    if levels and all(int(v) in levels for v in values):
        return apply_levels(mask, levels)
    if np.isin(values, (0, 255)).all():
        return (mask // 255).astype(np.uint8)
    if values.max() <= MAX_LABEL:
        return mask.astype(np.uint8)
    raise label_error(values, name)


def apply_levels(mask: np.ndarray, levels: dict) -> np.ndarray:
    """A uint8 mask with each stored value replaced by its class (values missing from `levels` become 0)."""
    lut = np.zeros(256, dtype=np.uint8)
    for value, label in levels.items():
        lut[int(value)] = label
    return lut[mask]


def label_error(values, name: str) -> LabelRangeError:
    """The one sentence for a mask whose values cannot be read as class labels."""
    values = sorted({int(v) for v in values})
    shown = ", ".join(str(v) for v in values[:6]) + (", …" if len(values) > 6 else "")
    return LabelRangeError(f"{name} holds values {shown}: masks must be 0/255, class indices 0–{MAX_LABEL} or "
                           f"at most {MAX_GREY_LEVELS} grey levels (a JPEG mask smears labels; save masks as PNG).")


def mask_levels(values) -> dict[int, int] | None:
    """Class of each value stored in a dataset's masks; None when they cannot be read as class labels.

    0/255 → 0/1 and class indices 0..MAX_LABEL are the usual cases, also mixed (some masks 0/1, some 0/255:
    255 is then foreground, class 1). Masks saved so that classes are visible use a few evenly spaced grey levels
    from 0 to 255 (0/85/170/255 for four classes): those map to 0, 1, 2, … on the smallest such grid (so a class
    absent from every mask keeps its number); any other small set of well separated levels (a single foreground
    value of 170, say) maps in order.
    """
    values = sorted({int(v) for v in values})
    if not values:
        return {}
    if set(values) <= {0, 255}:
        return {v: v // 255 for v in values}
    if values[-1] <= MAX_LABEL:
        return {v: v for v in values}
    if grey_levels(values):
        for k in range(len(values), MAX_GREY_LEVELS + 1) if values[-1] == 255 else ():
            step = 255 / (k - 1)
            if all(abs(v / step - round(v / step)) * step <= 0.5 for v in values):
                return {v: round(v / step) for v in values}
        return {v: i for i, v in enumerate(values)}
    if values[-1] == 255 and values[-2] <= 1:
        return {v: (1 if v == 255 else v) for v in values}     # binary 0/1 and 0/255 masks side by side
    return None


def usable_alone(values) -> bool:
    """Whether one mask's values can be class labels on their own: 0/255, class indices, or grey levels. A mask
    mixing 255 with small indices (0, 1, 255: 255 often marks 'ignore') or a smeared one is not."""
    values = {int(v) for v in values}
    return values <= {0, 255} or max(values, default=0) <= MAX_LABEL or grey_levels(values)


def grey_levels(values) -> bool:
    """Whether values look like deliberately chosen grey levels: 0 among them, at most MAX_GREY_LEVELS, and at
    least MIN_LEVEL_GAP apart. A JPEG-smeared mask (0, 1, 2, 253, 254, 255) is not."""
    values = sorted({int(v) for v in values})
    gaps = np.diff(values)
    return (values[0] == 0 and len(values) <= MAX_GREY_LEVELS and (gaps >= MIN_LEVEL_GAP).all()
            and values[-1] > MAX_LABEL)


def _text(ds, keyword: str) -> str | None:
    return str(ds.get(keyword) or "").strip() or None


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _label(source: Path | bytes, name: str) -> str:
    return name or (source.name if isinstance(source, Path) else "upload")


def _open(source: Path | bytes, label: str) -> Image.Image:
    """The first frame, decoded once its size (and frame count) passed the pixel limit."""
    limit = workspace.MAX_IMAGE_PIXELS
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit       # a deployment that raised our limit must not meet Pillow's instead
    try:
        data = source if isinstance(source, bytes) else source.read_bytes()    # no file handle left open by Pillow
        image = Image.open(BytesIO(data))   # reads the header only
        dicom.check_pixel_count(label, *image.size, getattr(image, "n_frames", 1))
        image.load()            # decode now, so truncated files fail here with a clear message
        if getattr(image, "n_frames", 1) == 1 and image.getexif().get(ORIENTATION_TAG, 1) != 1:
            image = ImageOps.exif_transpose(image)    # a photo or phone export shows upright, so store it upright
        return image
    except Image.DecompressionBombError as err:    # Pillow's own limit, far above ours: say it our way
        claimed = re.search(r"\((\d+) pixels\)", str(err))
        pixels = int(claimed.group(1)) if claimed else limit + 1
        raise UserError(f"{label} claims {dicom.megapixels(pixels)} megapixels, more than the limit of "
                        f"{dicom.megapixels(limit)} megapixels per file; use a smaller image or raise "
                        "LIGHTBOX_MAX_IMAGE_PIXELS.") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        reason = "cannot identify image file" if isinstance(err, UnidentifiedImageError) else _first_line(err)
        raise UserError(f"{label} is not a readable image ({reason}).") from err


def _pages(image: Image.Image, label: str) -> list[Image.Image]:
    if getattr(image, "n_frames", 1) == 1:
        return [image]                     # no copy: a large picture is held once
    pages, total = [], 0
    try:
        for page in ImageSequence.Iterator(image):
            total += page.size[0] * page.size[1]       # pages of a TIFF may differ in size: count each one
            if total > workspace.MAX_IMAGE_PIXELS:
                dicom.check_pixel_count(label, *page.size, len(pages) + 1, total)
            pages.append(page.copy())
        return pages
    except (OSError, ValueError, EOFError, SyntaxError) as err:
        raise UserError(f"{label} is not a readable image ({_first_line(err)}).") from err


def _pil_to_array(image: Image.Image) -> tuple[np.ndarray, str]:
    """(float32 (C, H, W) in [0, 1], stored type) for any Pillow mode, with one float32 copy at most: a 36 MP
    RGB photo makes a 412 MB result, and each extra temporary would cost as much again."""
    if image.mode in WIDE_MODES:
        values = np.asarray(image, dtype=np.float32)
        stored = {"I": "int32", "F": "float32"}.get(image.mode, "uint16")
        # 16-bit files rarely fill 0..65535 (12-bit detectors, CT numbers stored offset), so /65535 would leave
        # them nearly black; each image's own range is the only scale such a file carries
        low, high = float(values.min()), float(values.max())
        if high <= low:
            return np.zeros((1, *values.shape), np.float32), stored
        values = values if values.flags.writeable else values.copy()
        np.subtract(values, low, out=values)
        np.divide(values, high - low, out=values)
        return values[None], stored
    if image.mode in GREY_MODES and not _palette_is_colour(image):
        grey = image if image.mode == "L" else image.convert("L")
        return _unit_float(np.asarray(grey))[None], "uint8"
    rgb = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))   # drops alpha, maps CMYK/YCbCr/palette
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return _unit_float(rgb[..., 0])[None], "uint8"                          # RGB with equal channels is gray
    out = np.empty((3, *rgb.shape[:2]), np.float32)
    for channel in range(3):
        out[channel] = rgb[..., channel]
    return _unit_float(out), "uint8"


def _unit_float(values: np.ndarray) -> np.ndarray:
    """8-bit samples → float32 in [0, 1], divided in place (same numbers as `values / 255.0` in float32)."""
    out = values if values.dtype == np.float32 and values.flags.writeable else values.astype(np.float32)
    return np.divide(out, 255.0, out=out)


def _palette_is_colour(image: Image.Image) -> bool:
    if image.mode not in ("P", "PA"):
        return False
    colours = np.asarray(image.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
    return bool((colours != colours[:, :1]).any())


def _mask_page(image: Image.Image, label: str) -> np.ndarray:
    # A palette mask stores the class index as the pixel value: keep indices, ignore the display colours
    # (stored integer types are kept: widening a large mask to int64 would cost 8 bytes a pixel)
    if image.mode == "1":
        return np.asarray(image).astype(np.uint8)
    if image.mode in ("P", "L", "I;16", "I;16B", "I;16L", "I"):
        return np.asarray(image)
    if image.mode in ("LA", "PA"):
        return np.asarray(image.getchannel(0))
    rgb = np.asarray(image.convert("RGB"))
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return rgb[..., 0]
    raise LabelRangeError(f"{label} is a colour mask; save masks as gray images with one integer per class.")


def _as_labels(values: np.ndarray, label: str) -> np.ndarray:
    if not np.issubdtype(values.dtype, np.integer) and not (values == np.round(values)).all():
        raise LabelRangeError(f"{label} holds fractional values; masks must hold integer class labels.")
    if values.min() < 0 or values.max() > 255:
        raise LabelRangeError(f"{label} holds values outside 0–255; "
                              f"masks must be 0/255 or class indices 0–{MAX_LABEL}.")
    return values.astype(np.uint8)
