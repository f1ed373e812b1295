"""Reads an ingested dataset folder and serves fixed-size arrays from an on-disk cache.

Folder layout written by ingest (LIGHTBOX_HOME/datasets/<id>/):
    manifest.json         id, name, task, channels, classes, num_classes, samples[], report
    images/<key>.npy      float16 (C, H, W) in [0, 1], already windowed/normalised
    masks/<key>.npy       uint8 (H, W) integer labels (segmentation only)
    cache/<size>/         images.npy float16 (N, C, S, S), targets.npy — built on first use
Training reads only cache/<size>/: no Pillow or pydicom call happens during an epoch.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.data.folds import run_splits
from engine.data.manifest import SPLITS, dataset_dir, list_datasets, load_manifest  # noqa: F401 - re-exported
from engine.data.subset import train_mask
from engine.errors import UserError

# Stored images are capped at this many pixels on their longest side (aspect kept): a 3000-px radiograph would
# otherwise cost 18 MB per file in the cache, and no model here trains above 1024 px.
MAX_STORED_SIDE = int(os.environ.get("LIGHTBOX_MAX_STORED_SIDE", 1024))


@dataclass
class SplitArrays:
    images: np.ndarray      # float16 (N, C, S, S)
    targets: np.ndarray     # int64 (N,) class labels, or uint8 (N, S, S) masks
    keys: list[str]


def load_sample(dataset_id: str, key: str) -> tuple[np.ndarray, np.ndarray | None]:
    """One stored sample at its original size: float32 (C,H,W) image in [0,1] and its (H,W) mask if any."""
    folder = dataset_dir(dataset_id)
    image = np.load(folder / "images" / f"{key}.npy").astype(np.float32)
    mask_path = folder / "masks" / f"{key}.npy"
    return image, (np.load(mask_path) if mask_path.exists() else None)


def resize_image(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """(C, H, W) float array → float32 (C, h, w) (square when size is an int), bilinear with antialiasing."""
    shape = (size, size) if isinstance(size, int) else tuple(size)
    tensor = torch.as_tensor(np.asarray(image, dtype=np.float32))[None]
    if tensor.shape[-2:] != shape:
        tensor = F.interpolate(tensor, size=shape, mode="bilinear", antialias=True, align_corners=False)
    return tensor[0].clamp_(0, 1).numpy()


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """(H, W) integer labels → uint8 (h, w), nearest neighbour so labels stay labels."""
    shape = (size, size) if isinstance(size, int) else tuple(size)
    tensor = torch.as_tensor(np.asarray(mask, dtype=np.uint8))[None, None]
    if tensor.shape[-2:] != shape:
        tensor = F.interpolate(tensor.float(), size=shape, mode="nearest").to(torch.uint8)
    return tensor[0, 0].numpy()


def capped_shape(height: int, width: int) -> tuple[int, int]:
    """The stored size of an image: unchanged, or scaled down so its longest side is MAX_STORED_SIDE."""
    scale = MAX_STORED_SIDE / max(height, width)
    if scale >= 1:
        return height, width
    return max(1, round(height * scale)), max(1, round(width * scale))


def cap_image(image: np.ndarray) -> np.ndarray:
    """Scale a (C, H, W) image down to the stored-size cap (a no-op for images within it)."""
    shape = capped_shape(*image.shape[-2:])
    return image if shape == tuple(image.shape[-2:]) else resize_image(image, shape)


def cap_mask(mask: np.ndarray) -> np.ndarray:
    shape = capped_shape(*mask.shape[-2:])
    return mask if shape == tuple(mask.shape[-2:]) else resize_mask(mask, shape)


def match_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Make a (C, H, W) image have the dataset's channel count (gray ↔ RGB)."""
    have = image.shape[0]
    if have == channels:
        return image
    if have == 1:
        return np.repeat(image, channels, axis=0)
    if channels == 1:
        return image[:3].mean(axis=0, keepdims=True)
    raise UserError(f"Image has {have} channels but the model expects {channels}.")


def to_model_input(image: np.ndarray, channels: int, size: int) -> np.ndarray:
    """The single preprocessing path shared by the cache and by prediction (channels, square resize).

    Its input is a stored-size image: ingest caps what it stores, prediction caps with cap_image first."""
    return resize_image(match_channels(image, channels), size)


def _build_cache(folder: Path, manifest: dict, size: int) -> Path:
    cache = folder / "cache" / str(size)
    if (cache / "done").exists():
        return cache
    tmp = folder / "cache" / f".{size}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    samples, channels = manifest["samples"], manifest["channels"]
    images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.float16,
                                       shape=(len(samples), channels, size, size))
    segmentation = manifest["task"] == "segmentation"
    if segmentation:
        targets = np.zeros((len(samples), size, size), dtype=np.uint8)
    else:
        targets = np.array([s["label"] for s in samples], dtype=np.int64)
    for i, sample in enumerate(samples):
        images[i] = to_model_input(np.load(folder / "images" / f"{sample['key']}.npy"), channels, size)
        if segmentation:
            targets[i] = resize_mask(np.load(folder / "masks" / f"{sample['key']}.npy"), size)
    images.flush()
    del images
    np.save(tmp / "targets.npy", targets)
    (tmp / "done").write_text("ok")
    try:
        tmp.rename(cache)       # atomic: concurrent builders race harmlessly
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return cache


def load_split(dataset_id: str, split: str, size: int, folds: int = 0, fold: int = 0,
               train_fraction: float = 1.0) -> SplitArrays:
    """Arrays of one split at one square size, from the cache (built once per size). With `folds` ≥ 2 the
    train and val splits are those of cross-validation fold `fold` (engine.data.folds); `train_fraction` < 1
    keeps that share of the training split, whole groups at a time (engine.data.subset)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    folder = dataset_dir(dataset_id)
    manifest = load_manifest(dataset_id)
    cache = _build_cache(folder, manifest, size)
    index = split_index(manifest, split, folds, fold, train_fraction)
    images = np.load(cache / "images.npy", mmap_mode="r")
    targets = np.load(cache / "targets.npy", mmap_mode="r")
    return SplitArrays(
        images=np.ascontiguousarray(images[index]),
        targets=np.ascontiguousarray(targets[index]),
        keys=[manifest["samples"][i]["key"] for i in index],
    )


def split_index(manifest: dict, split: str, folds: int = 0, fold: int = 0, train_fraction: float = 1.0) -> list[int]:
    """Positions in manifest["samples"] of one run's split (its fold, and its share of the training split)."""
    splits = run_splits(manifest, folds, fold)
    if split == "train" and train_fraction < 1.0:
        return [i for i, used in enumerate(train_mask(manifest["samples"], splits, train_fraction)) if used]
    return [i for i, s in enumerate(splits) if s == split]
