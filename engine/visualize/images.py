"""Turning arrays into pictures: grey or colour images to RGB, label masks drawn over them, preview panels."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

# Label colours: background stays as it is; classes 1, 2, … cycle through these.
PALETTE = np.array([[0, 0, 0], [255, 64, 64], [64, 200, 255], [255, 210, 0], [160, 90, 255], [0, 220, 120]],
                   dtype=np.float32)
OVERLAY_ALPHA = 0.45
TRUTH_OUTLINE = (0, 255, 0)       # ground truth drawn as a green outline, so it reads apart from the prediction


def to_rgb(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """(C,H,W) float in [0,1] → (H,W,3) uint8. Three channels are colour; any other count shows the first
    channel in grey (a 2-channel or 4-channel scan has no natural colour mapping)."""
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().numpy()
    array = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
    if array.ndim == 2:
        array = array[None]
    array = array[:3] if array.shape[0] >= 3 else np.repeat(array[:1], 3, axis=0)
    return (array.transpose(1, 2, 0) * 255).astype(np.uint8)


def label_colour(label: int) -> tuple[int, int, int]:
    """The colour class `label` (≥ 1) is drawn in."""
    return tuple(int(c) for c in PALETTE[1:][(label - 1) % (len(PALETTE) - 1)])


def overlay(rgb: np.ndarray, labels: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Blend label colours over an RGB image; background (0) stays untouched."""
    labels = np.asarray(labels)
    colours = PALETTE[1:][(labels.astype(np.int64) - 1) % (len(PALETTE) - 1)]
    mixed = rgb.astype(np.float32)
    fg = labels > 0
    mixed[fg] = (1 - alpha) * mixed[fg] + alpha * colours[fg]
    return mixed.astype(np.uint8)


def border(labels: np.ndarray, width: int = 1) -> np.ndarray:
    """Boolean (H, W): pixels of a labelled region (label > 0) within `width` pixels of another label, of the
    background or of the image's edge (a region cut by the edge stays closed)."""
    labels = np.asarray(labels)
    fg = labels > 0
    padded_labels = np.pad(labels, 1, constant_values=0)
    h, w = labels.shape
    shifts = [(slice(1 + dy, 1 + dy + h), slice(1 + dx, 1 + dx + w))
              for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))]
    inner = fg
    for _ in range(max(1, int(width))):      # peel one ring per step: erosion by the 4-neighbourhood
        padded = np.pad(inner, 1, constant_values=False)
        keep = inner.copy()
        for near in shifts:
            keep &= padded[near] & (padded_labels[near] == labels)
        inner = keep
    return fg & ~inner


def outline(rgb: np.ndarray, labels: np.ndarray, colour: Sequence[int] = TRUTH_OUTLINE,
            width: int = 1) -> np.ndarray:
    """Draw the border of every labelled region (label > 0) in one colour, `width` pixels wide, inside it."""
    out = rgb.copy()
    out[border(labels, width)] = np.asarray(colour, dtype=out.dtype)
    return out


def outline_width(shape: Sequence[int]) -> int:
    """About one screen pixel: a page column shows ~400 px, so a 1-pixel line on a 1024-px scan would fade away."""
    return max(1, round(max(shape[-2:]) / 400))


def compare_masks(rgb: np.ndarray, predicted: np.ndarray, truth: np.ndarray, alpha: float = OVERLAY_ALPHA,
                  colour: Sequence[int] = TRUTH_OUTLINE) -> np.ndarray:
    """The predicted mask filled in class colours with the true mask's border drawn over it, to compare by eye."""
    return outline(overlay(rgb, predicted, alpha), truth, colour, outline_width(np.shape(truth)))


def with_mask(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """RGB picture of an image with its label mask blended on top in colour (background left as is)."""
    rgb = to_rgb(image)
    return rgb if mask is None else overlay(rgb, np.asarray(mask))


def segmentation_panel(images, targets, preds) -> Image.Image:
    """One row per image: the image, its true mask, the predicted mask."""
    rows = []
    for image, target, pred in zip(images, targets, preds):
        rgb = to_rgb(image)
        rows.append(np.concatenate([rgb, overlay(rgb, np.asarray(target)), overlay(rgb, np.asarray(pred))], axis=1))
    return Image.fromarray(np.concatenate(rows, axis=0))


def classification_panel(images, targets, probs, classes: list[str]) -> Image.Image:
    """Tiles with the true class and the predicted one (green when right, red when wrong)."""
    tiles = []
    for image, target, prob in zip(images, targets, probs):
        tile = Image.fromarray(to_rgb(image)).resize((160, 160))
        canvas = Image.new("RGB", (160, 196), "white")
        canvas.paste(tile, (0, 0))
        pred = int(prob.argmax())
        colour = (0, 140, 0) if pred == int(target) else (200, 0, 0)
        draw = ImageDraw.Draw(canvas)
        draw.text((4, 162), f"true: {classes[int(target)]}", fill=(0, 0, 0))
        draw.text((4, 178), f"pred: {classes[pred]} {float(prob[pred]):.2f}", fill=colour)
        tiles.append(np.asarray(canvas))
    return Image.fromarray(np.concatenate(tiles, axis=1))
