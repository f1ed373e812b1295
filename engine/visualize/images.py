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


def outline(rgb: np.ndarray, labels: np.ndarray, colour: Sequence[int] = TRUTH_OUTLINE) -> np.ndarray:
    """Draw the border of every labelled region (label > 0) in one colour, one pixel wide."""
    labels = np.asarray(labels)
    fg = labels > 0
    inner = fg.copy()
    inner[1:, :] &= fg[:-1, :] & (labels[1:, :] == labels[:-1, :])
    inner[:-1, :] &= fg[1:, :] & (labels[:-1, :] == labels[1:, :])
    inner[:, 1:] &= fg[:, :-1] & (labels[:, 1:] == labels[:, :-1])
    inner[:, :-1] &= fg[:, 1:] & (labels[:, :-1] == labels[:, 1:])
    edge = fg & ~inner
    out = rgb.copy()
    out[edge] = np.asarray(colour, dtype=out.dtype)
    return out


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
