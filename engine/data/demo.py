"""Built-in synthetic datasets (no download), written in the upload layout so they go through ingest like any upload."""
from __future__ import annotations

import fcntl
import io as bytes_io
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image
from scipy import ndimage

from engine import workspace
from engine.data.dataset import list_datasets
from engine.data.ingest import ingest

DEMOS = {
    "segmentation": {
        "title": "Synthetic cardiac MRI",
        "description": "Short-axis-like slices with the left-ventricle blood pool outlined. The right ventricle "
                       "is just as bright, so intensity alone does not find it: the network has to learn shape "
                       "and context.",
        "n": 200,
    },
    "classification": {
        "title": "Synthetic chest vs abdomen X-ray",
        "description": "Radiograph-like images of two body regions with random exposure, position and noise: "
                       "lungs, ribs and clavicles versus spine, bowel gas and pelvis.",
        "n": 200,
    },
}


def write_demo(kind: str, out: Path, n: int | None = None, size: int = 128, seed: int = 0) -> Path:
    """Write a demo upload to a folder, or to a ZIP when out ends with .zip; returns out."""
    if kind not in DEMOS:
        raise ValueError(f"unknown demo kind {kind!r}; choose from {sorted(DEMOS)}")
    n = n or DEMOS[kind]["n"]
    files = _cardiac_files(n, size, seed) if kind == "segmentation" else _xray_files(n, size, seed)
    out = Path(out)
    if out.suffix.lower() == ".zip":
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, pixels in files:
                archive.writestr(name, _png(pixels))
    else:
        for name, pixels in files:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(_png(pixels))
    return out


def ensure_demo_dataset(kind: str) -> str:
    """The id of the ingested demo dataset of this kind, generating and ingesting it on first use."""

    title = DEMOS[kind]["title"]

    def existing() -> str | None:
        for manifest in list_datasets():
            if manifest.get("name") == title and manifest.get("task") == kind:
                return manifest["id"]
        return None

    found = existing()
    if found:
        return found
    # `make run`, the app and a worker may all ask for the demos at once: one process builds, the rest wait.
    with open(workspace.home() / f".demo-{kind}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = existing()
        if found:
            return found
        with tempfile.TemporaryDirectory(dir=workspace.home()) as tmp:
            folder = write_demo(kind, Path(tmp) / title.lower().replace(" ", "-"))
            return ingest(folder, kind, name=title).dataset_id


def _png(pixels: np.ndarray) -> bytes:
    buffer = bytes_io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


# ---- shapes on a unit grid --------------------------------------------------------------------------

def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1): (y, x)."""
    return np.mgrid[0:size, 0:size].astype(np.float64) / size + 0.5 / size


def _radius(y, x, cy, cx, ry, rx, angle=0.0) -> np.ndarray:
    """Normalised elliptic radius: < 1 inside the ellipse."""
    c, s = np.cos(angle), np.sin(angle)
    u, v = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
    return np.sqrt((u / rx) ** 2 + (v / ry) ** 2)


def _soft(r: np.ndarray, size: int, scale: float) -> np.ndarray:
    """Anti-aliased inside-ness of an ellipse whose smaller radius is `scale` (about one pixel of edge)."""
    return np.clip((1.0 - r) * scale * size + 0.5, 0.0, 1.0)


def _texture(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Smooth random field with zero mean and unit spread."""
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma)
    return (field - field.mean()) / (field.std() + 1e-8)


# ---- synthetic cardiac MRI --------------------------------------------------------------------------

def _cardiac_files(n: int, size: int, seed: int) -> Iterator[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    for i in range(n):
        image, mask = cardiac_slice(rng, size)
        yield f"images/case_{i:03d}.png", image
        yield f"masks/case_{i:03d}.png", mask * 255


def cardiac_slice(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One short-axis-like slice (uint8) and its left-ventricle blood-pool mask (0/1)."""
    y, x = _grid(size)
    tissue, blood, myo = rng.uniform(0.22, 0.34), rng.uniform(0.65, 0.95), rng.uniform(0.18, 0.30)
    body_cy, body_cx = 0.5 + rng.normal(0, 0.02), 0.5 + rng.normal(0, 0.02)
    body_r = _radius(y, x, body_cy, body_cx, rng.uniform(0.36, 0.44), rng.uniform(0.42, 0.48))
    img = 0.03 + (tissue - 0.03) * _soft(body_r, size, 0.4) + 0.04 * _texture(rng, size, 2.0) * (body_r < 1)
    img += 0.35 * ((body_r > 0.9) & (body_r < 1.0))                     # bright subcutaneous fat
    for side in (-1, 1):                                                 # dark lungs behind the heart
        lung = _radius(y, x, 0.45 + rng.normal(0, 0.02), 0.5 + side * 0.22, 0.2, 0.11, rng.normal(0, 0.2))
        img = img * (1 - _soft(lung, size, 0.11)) + 0.06 * _soft(lung, size, 0.11)
    liver = _radius(y, x, 0.78, 0.32, 0.14, 0.2, 0.3)                   # liver dome in the corner of the slice
    img += (rng.uniform(0.38, 0.5) - tissue) * _soft(liver, size, 0.14) * (body_r < 0.95)

    cy, cx = 0.5 + rng.normal(0, 0.05), 0.52 + rng.normal(0, 0.05)
    ry, angle = rng.uniform(0.065, 0.14), rng.uniform(0, np.pi)
    rx = ry * rng.uniform(0.72, 1.0)
    wall = rng.uniform(0.035, 0.06)
    lv = _radius(y, x, cy, cx, ry, rx, angle)
    outer = _radius(y, x, cy, cx, ry + wall, rx + wall, angle)
    # Right ventricle: a bright crescent wrapped round the septum on the image-left side
    phi = np.pi + rng.normal(0, 0.35)
    reach = (rx + wall) * rng.uniform(0.85, 1.15)
    rv_cy, rv_cx = cy + reach * np.sin(phi), cx + reach * np.cos(phi)
    rv_ry, rv_rx = (ry + wall) * rng.uniform(1.1, 1.5), (rx + wall) * rng.uniform(0.6, 0.95)
    rv = _radius(y, x, rv_cy, rv_cx, rv_ry, rv_rx, phi + np.pi / 2)
    septum = _radius(y, x, cy, cx, ry + wall + 0.012, rx + wall + 0.012, angle)
    rv_blood = _soft(rv, size, 0.06) * (1 - _soft(septum, size, 0.1))

    heart = _soft(outer, size, 0.1)
    img = img * (1 - heart) + myo * heart
    if rng.random() < 0.6:                                               # pericardial fat: another bright arc
        band = (outer > 1.05) & (outer < 1.05 + rng.uniform(0.08, 0.2))
        ring = band & (np.cos(np.arctan2(y - cy, x - cx) - rng.uniform(0, 2 * np.pi)) > 0.3)
        img = np.where(ring, rng.uniform(0.6, 0.85), img)
    img = img * (1 - rv_blood) + blood * rng.uniform(0.85, 1.05) * rv_blood
    cavity = _soft(lv, size, min(rx, ry))
    pool = blood * (1 + 0.06 * _texture(rng, size, 1.5))                # flow makes the pool uneven
    img = img * (1 - cavity) + pool * cavity
    for _ in range(rng.integers(1, 3)):                                  # papillary muscles: dark but inside the label
        t = rng.uniform(0, 2 * np.pi)
        py, px = cy + 0.7 * ry * np.sin(t), cx + 0.7 * rx * np.cos(t)
        pap = _soft(_radius(y, x, py, px, 0.018, 0.014), size, 0.014)
        img = img * (1 - pap) + myo * 1.1 * pap

    img = ndimage.gaussian_filter(img, rng.uniform(0.5, 1.1))            # partial volume / point spread
    img *= np.exp(rng.uniform(0.1, 0.3) * _texture(rng, size, size / 5))   # smooth coil sensitivity (bias field)
    sigma = rng.uniform(0.015, 0.05)
    img = np.hypot(img + sigma * rng.standard_normal(img.shape), sigma * rng.standard_normal(img.shape))  # Rician
    img = (img / np.percentile(img, 99.5)) ** rng.uniform(0.75, 1.3)     # scanner-to-scanner contrast
    return _to_uint8(img), (lv < 1).astype(np.uint8)


# ---- synthetic chest vs abdomen radiographs ---------------------------------------------------------

def _xray_files(n: int, size: int, seed: int) -> Iterator[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    draw: dict[str, Callable] = {"chest": _chest, "abdomen": _abdomen}
    for i in range(n):
        kind = ("chest", "abdomen")[i % 2]
        yield f"{kind}/{kind}_{i // 2:03d}.png", xray(rng, size, draw[kind])


def xray(rng: np.random.Generator, size: int, body: Callable) -> np.ndarray:
    """A radiograph-like uint8 image: anatomy from `body`, then a random pose, exposure and noise."""
    y, x = _grid(size)
    scale, angle = rng.uniform(0.85, 1.15), rng.normal(0, 0.08)
    dy, dx = rng.normal(0, 0.04, size=2)
    c, s = np.cos(angle), np.sin(angle)
    u = ((x - 0.5 - dx) * c + (y - 0.5 - dy) * s) / scale + 0.5          # coordinates in the anatomy's frame
    v = (-(x - 0.5 - dx) * s + (y - 0.5 - dy) * c) / scale + 0.5
    img = body(rng, v, u, size)
    img = ndimage.gaussian_filter(img + 0.03 * _texture(rng, size, 1.0), rng.uniform(0.4, 1.0))
    img += rng.uniform(0.005, 0.03) * rng.standard_normal(img.shape)    # quantum noise
    # Exposure control: both classes draw brightness and contrast from the same ranges, so the mean says nothing
    img = (img - img.mean()) / (img.std() + 1e-8) * rng.uniform(0.12, 0.22) + rng.uniform(0.3, 0.6)
    return _to_uint8(img)


def _chest(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, size: int) -> np.ndarray:
    body = _soft(_radius(y, x, 0.55, 0.5, 0.6, 0.44), size, 0.4)
    img = 0.05 + 0.45 * body
    lungs = np.zeros_like(img)
    for side in (-1, 1):
        cx = 0.5 + side * rng.uniform(0.17, 0.21)
        lung = _radius(y, x, 0.48, cx, rng.uniform(0.27, 0.32), rng.uniform(0.11, 0.14), side * 0.08)
        lungs += _soft(lung, size, 0.11)
    img -= 0.3 * np.clip(lungs, 0, 1) * (1 + 0.15 * _texture(rng, size, 1.2))
    heart = _radius(y, x, 0.6, 0.53, rng.uniform(0.15, 0.2), rng.uniform(0.1, 0.14), -0.3)
    img += 0.25 * _soft(heart, size, 0.1)
    img += 0.2 * _soft(_radius(y, x, 0.4, 0.5, 0.3, 0.045), size, 0.045)          # mediastinum
    spacing, start = rng.uniform(0.055, 0.07), rng.uniform(0.2, 0.26)
    for k in range(9):                                                   # ribs curve down and out from the spine
        curve = start + k * spacing + rng.uniform(0.5, 0.8) * (x - 0.5) ** 2
        img += 0.12 * ((np.abs(y - curve) < 0.012) & (np.abs(x - 0.5) > 0.04) & (np.abs(x - 0.5) < 0.4))
    for side in (-1, 1):                                                 # clavicles
        line = 0.17 + 0.18 * np.abs(x - 0.5) * rng.uniform(0.8, 1.2)
        img += 0.2 * ((np.abs(y - line) < 0.014) & (np.abs(x - 0.5) > 0.05) & (np.abs(x - 0.5) < 0.33)
                      & (np.sign(x - 0.5) == side))
    return img


def _abdomen(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, size: int) -> np.ndarray:
    body = _soft(_radius(y, x, 0.5, 0.5, 0.62, 0.42), size, 0.4)
    img = 0.05 + 0.5 * body
    img += 0.06 * _soft(_radius(y, x, 0.28, 0.35, 0.16, 0.2), size, 0.16)        # liver
    top = rng.uniform(0.02, 0.08)
    for k in range(int((0.7 - top) / 0.11)):                             # lumbar vertebrae with disc gaps
        cy = top + 0.06 + k * 0.11
        img += 0.25 * ((np.abs(y - cy) < 0.045) & (np.abs(x - 0.5) < rng.uniform(0.05, 0.065)))
        img += 0.12 * ((np.abs(y - cy) < 0.015) & (np.abs(np.abs(x - 0.5) - 0.09) < 0.03))   # transverse processes
    for _ in range(rng.integers(6, 16)):                                 # bowel gas
        gy, gx = rng.uniform(0.2, 0.75), rng.uniform(0.2, 0.8)
        gas = _radius(y, x, gy, gx, rng.uniform(0.015, 0.06), rng.uniform(0.015, 0.06), rng.uniform(0, np.pi))
        img -= rng.uniform(0.15, 0.3) * _soft(gas, size, 0.015)
    for side in (-1, 1):                                                 # iliac wings and the pelvic ring
        wing = _radius(y, x, 0.86, 0.5 + side * 0.2, 0.14, 0.17, side * 0.4)
        img += 0.2 * ((wing > 0.85) & (wing < 1.0) & (y < 0.95))
    ring = _radius(y, x, 0.98, 0.5, 0.1, 0.13)
    img += 0.18 * ((ring > 0.8) & (ring < 1.0))
    return img
