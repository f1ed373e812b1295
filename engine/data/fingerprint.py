"""A dataset's fingerprint: the few numbers that choose training settings (sizes, intensities, classes, masks).

Computed once at ingest from the stored arrays and kept in manifest["fingerprint"]; datasets ingested before
this existed get it on first use, cached next to their manifest (fingerprint.json). No torch here."""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
from scipy import ndimage

from engine.data.folds import group_count
from engine.data.manifest import dataset_dir, load_manifest

VERSION = 1
MAX_IMAGES = 2000          # sampled at most: the fingerprint stays a few seconds on a laptop
PIXELS_PER_IMAGE = 4096    # intensity percentiles from a strided subsample of each image
# Per-image mean brightness varying by more than this fraction of the overall mean (coefficient of variation)
# says the images come from sources (scanners, exposures) that differ in intensity.
SOURCES_DIFFER_CV = 0.25


def fingerprint(manifest: dict) -> dict:
    """The dataset's fingerprint: from the manifest when ingest stored one, else computed now and cached."""
    if manifest.get("fingerprint", {}).get("version") == VERSION:
        return manifest["fingerprint"]
    folder = dataset_dir(manifest["id"])
    cached = folder / "fingerprint.json"
    if cached.exists():
        try:
            found = json.loads(cached.read_text())
            if found.get("version") == VERSION:
                return found
        except (OSError, ValueError):
            pass
    full = manifest if "samples" in manifest else load_manifest(manifest["id"])
    result = compute_fingerprint(full, folder)
    tmp = folder / f".fingerprint.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(result))
        tmp.replace(cached)                    # atomic: two pages asking at once both end with a whole file
    except OSError:
        pass                                   # a read-only dataset folder: computed again next time
    return result


def compute_fingerprint(manifest: dict, folder: Path, seed: int = 0) -> dict:
    """Read (a sample of) the stored arrays in `folder` and summarise them (see the module docstring)."""
    samples = manifest["samples"]
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(samples), size=min(len(samples), MAX_IMAGES), replace=False).tolist())
    images = [np.load(Path(folder) / "images" / f"{samples[i]['key']}.npy") for i in chosen]
    out = {"version": VERSION, "task": manifest["task"], "images": len(samples), "sampled": len(chosen),
           "groups": group_count(manifest) if samples else 0, "channels": manifest["channels"],
           "split_counts": dict(Counter(s["split"] for s in samples)),
           "size": _sizes(samples, images), "intensity": _intensity(images)}
    out |= _classes(manifest, [samples[i] for i in chosen], folder)
    return out


def _stats(values) -> dict:
    values = np.asarray(values, dtype=np.float64)
    return {"min": float(values.min()), "median": float(np.median(values)), "max": float(values.max())}


def _sizes(samples: list[dict], images: list[np.ndarray]) -> dict:
    """Original sizes (as uploaded, from the manifest) and the stored sizes the training cache starts from."""
    heights = [s["height"] for s in samples]
    widths = [s["width"] for s in samples]
    return {"height": _stats(heights), "width": _stats(widths),
            "aspect": _stats([w / h for h, w in zip(heights, widths)]),
            "stored_side": _stats([max(image.shape[-2:]) for image in images])}


def _intensity(images: list[np.ndarray]) -> dict:
    """Per channel on the stored [0, 1] arrays: mean, sd, 1st and 99th percentile; and how much the images'
    own mean brightness varies (sd of per-image means), which says whether the sources differ in intensity."""
    channels = images[0].shape[0]
    pixels = [[] for _ in range(channels)]
    image_means = []
    for image in images:
        stride = max(1, int(np.sqrt(image.shape[-2] * image.shape[-1] / PIXELS_PER_IMAGE)))
        part = image[:, ::stride, ::stride].astype(np.float32)
        for c in range(channels):
            pixels[c].append(part[c].ravel())
        image_means.append(float(part.mean()))
    per_channel = [np.concatenate(p) for p in pixels]
    means = np.asarray(image_means)
    spread = float(means.std() / max(means.mean(), 1e-6))
    return {"mean": [float(p.mean()) for p in per_channel], "sd": [float(p.std()) for p in per_channel],
            "p1": [float(np.percentile(p, 1)) for p in per_channel],
            "p99": [float(np.percentile(p, 99)) for p in per_channel],
            "image_mean_sd": float(means.std()), "image_mean_cv": spread,
            "sources_differ": bool(spread > SOURCES_DIFFER_CV)}


def _imbalance(counts: list[int]) -> float:
    present = [c for c in counts if c > 0]
    return float(max(present) / min(present)) if len(present) >= 2 else 1.0


def _classes(manifest: dict, chosen: list[dict], folder: Path) -> dict:
    classes = manifest["classes"]
    if manifest["task"] == "classification":
        counts = Counter(s.get("label") for s in manifest["samples"])
        per_class = [counts.get(i, 0) for i in range(len(classes))]
        return {"classes": classes, "class_counts": dict(zip(classes, per_class)),
                "imbalance": _imbalance(per_class)}
    return {"classes": classes, **_masks(classes, chosen, folder)}


def _masks(classes: list[str], chosen: list[dict], folder: Path) -> dict:
    """Foreground share per class (mean over images), the smallest structure's size and the share of empty masks.

    The smallest structure of an image is the smallest, over foreground classes, of each class's largest
    connected piece: stray specks of a few pixels would otherwise pass for 'the structure'."""
    k = len(classes)
    shares = np.zeros(k)
    pixel_counts = np.zeros(k, dtype=np.int64)
    smallest, smallest_share, empty = [], [], 0
    for sample in chosen:
        mask = np.load(Path(folder) / "masks" / f"{sample['key']}.npy")
        counts = np.bincount(mask.ravel(), minlength=k)[:k]
        pixel_counts += counts
        shares += counts / mask.size
        if counts[1:].sum() == 0:
            empty += 1
            continue
        areas = []
        for label in range(1, k):
            if counts[label]:
                pieces, n = ndimage.label(mask == label)
                areas.append(int(np.bincount(pieces.ravel())[1:].max()))
        smallest.append(min(areas))
        smallest_share.append(min(areas) / mask.size)
    n = max(1, len(chosen))
    fg = pixel_counts[1:].tolist()
    return {"class_counts": dict(zip(classes, pixel_counts.tolist())),      # pixels at stored size
            "imbalance": _imbalance(fg),                                   # among the foreground classes
            "foreground_share": {c: float(s / n) for c, s in zip(classes[1:], shares[1:])},
            "object_px": float(np.median(smallest)) if smallest else 0.0,
            "object_share": float(np.median(smallest_share)) if smallest_share else 0.0,
            "empty_masks": empty / n}
