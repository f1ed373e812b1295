"""Evaluation metrics for segmentation and classification: plain functions on arrays, plus running meters.

Conventions, used by every function and meter here:
- Dice/IoU of a class absent from both prediction and target is `empty` (default 1.0: nothing to find, nothing
  found). A class present in only one of them scores 0.
- SegmentationMeter scores each image on its own and averages over images, per class (each image counts equally,
  as in most medical segmentation papers). "dice"/"iou" are the mean over foreground classes 1..K-1, so for a
  binary task they are the foreground Dice/IoU. Pixel accuracy pools all pixels.
- hausdorff95 is symmetric: the larger of the two directed 95th percentiles of boundary-to-boundary distances
  (as MONAI does). Both masks empty → 0.0; exactly one empty → nan, since there is no surface to measure to.
  The meter's "hd95" is the mean over images of the foreground (label > 0) HD95, skipping nan.
- Classification: per-class precision/recall/F1 with no denominator are 0; balanced accuracy averages recall over
  classes present in the target; macro F1 averages over classes present in the target or the prediction.
  roc_auc is nan when any class (both classes, for binary) is missing from the target.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from scipy import ndimage, stats

ArrayLike = np.ndarray | torch.Tensor


# ---------------------------------------------------------------- shared counting

def confusion_matrix(pred: ArrayLike, target: ArrayLike, num_classes: int) -> np.ndarray:
    """K×K counts: rows are true labels, columns predicted labels."""
    pred, target = _labels(pred), _labels(target)
    if pred.shape != target.shape:
        raise ValueError(f"Prediction shape {pred.shape} differs from target shape {target.shape}.")
    _check_range(pred, num_classes)
    _check_range(target, num_classes)
    flat = target.ravel() * num_classes + pred.ravel()
    return np.bincount(flat, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def _overlap(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True positives, false positives, false negatives per class; works on (..., K, K) stacks."""
    tp = np.diagonal(confusion, axis1=-2, axis2=-1).astype(np.float64)
    return tp, confusion.sum(axis=-2) - tp, confusion.sum(axis=-1) - tp


def _ratio(num: np.ndarray, den: np.ndarray, when_zero: float) -> np.ndarray:
    return np.where(den > 0, num / np.maximum(den, 1), when_zero)


def _dice(confusion: np.ndarray, empty: float) -> np.ndarray:
    tp, fp, fn = _overlap(confusion)
    return _ratio(2 * tp, 2 * tp + fp + fn, empty)


def _iou(confusion: np.ndarray, empty: float) -> np.ndarray:
    tp, fp, fn = _overlap(confusion)
    return _ratio(tp, tp + fp + fn, empty)


# ---------------------------------------------------------------- segmentation

def dice_per_class(pred: ArrayLike, target: ArrayLike, num_classes: int, empty: float = 1.0) -> np.ndarray:
    """Dice 2|P∩T| / (|P|+|T|) for each class of two integer label maps of any shape."""
    return _dice(confusion_matrix(pred, target, num_classes), empty)


def iou_per_class(pred: ArrayLike, target: ArrayLike, num_classes: int, empty: float = 1.0) -> np.ndarray:
    """IoU (Jaccard) |P∩T| / |P∪T| for each class of two integer label maps of any shape."""
    return _iou(confusion_matrix(pred, target, num_classes), empty)


def pixel_accuracy(pred: ArrayLike, target: ArrayLike) -> float:
    """Fraction of pixels whose predicted label equals the true one."""
    return accuracy(pred, target)


def hausdorff95(pred_mask: ArrayLike, target_mask: ArrayLike, spacing: Sequence[float] = (1.0, 1.0)) -> float:
    """Symmetric 95th-percentile surface distance between two boolean masks, in units of `spacing`."""
    pred, target = _labels(pred_mask).astype(bool), _labels(target_mask).astype(bool)
    if not pred.any() and not target.any():
        return 0.0
    if not pred.any() or not target.any():
        return float("nan")
    pred_edge, target_edge = _boundary(pred), _boundary(target)
    # distance from every pixel to the nearest boundary pixel of the other mask, read off at this mask's boundary
    to_target = ndimage.distance_transform_edt(~target_edge, sampling=spacing)[pred_edge]
    to_pred = ndimage.distance_transform_edt(~pred_edge, sampling=spacing)[target_edge]
    return float(max(np.percentile(to_target, 95), np.percentile(to_pred, 95)))


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of the mask with a 4-neighbour outside it (the image border counts as outside)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


# ---------------------------------------------------------------- classification

def accuracy(pred: ArrayLike, target: ArrayLike) -> float:
    """Fraction of predictions equal to the target."""
    pred, target = _labels(pred), _labels(target)
    return float(np.mean(pred == target)) if pred.size else float("nan")


def balanced_accuracy(pred: ArrayLike, target: ArrayLike, num_classes: int) -> float:
    """Mean recall over the classes that occur in the target."""
    return _balanced_accuracy(confusion_matrix(pred, target, num_classes))


def precision_recall_f1(pred: ArrayLike, target: ArrayLike, num_classes: int) -> dict[str, np.ndarray]:
    """Per-class "precision", "recall", "f1" (0 where undefined) and "support" (true count)."""
    return _precision_recall_f1(confusion_matrix(pred, target, num_classes))


def roc_auc(probs: ArrayLike, target: ArrayLike) -> float:
    """ROC AUC: binary uses the class-1 probability; more classes average one-vs-rest AUCs (macro)."""
    probs, target = np.asarray(_numpy(probs), dtype=np.float64), _labels(target).ravel()
    if probs.ndim == 1:
        return _binary_auc(probs, target == 1)
    if probs.shape[1] == 2:
        return _binary_auc(probs[:, 1], target == 1)
    return float(np.mean([_binary_auc(probs[:, k], target == k) for k in range(probs.shape[1])]))


def _binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann–Whitney U / (n_pos n_neg): the chance a positive outranks a negative, ties counting one half."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(scores)  # tied scores share their average rank, which is what makes ties count ½
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _balanced_accuracy(confusion: np.ndarray) -> float:
    support = confusion.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(confusion)[present] / support[present])) if present.any() else float("nan")


def _precision_recall_f1(confusion: np.ndarray) -> dict[str, np.ndarray]:
    tp, fp, fn = _overlap(confusion)
    return {"precision": _ratio(tp, tp + fp, 0.0), "recall": _ratio(tp, tp + fn, 0.0),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn, 0.0), "support": confusion.sum(axis=1)}


def _f1_macro(confusion: np.ndarray) -> float:
    seen = (confusion.sum(axis=0) + confusion.sum(axis=1)) > 0
    return float(np.mean(_precision_recall_f1(confusion)["f1"][seen])) if seen.any() else float("nan")


# ---------------------------------------------------------------- running meters
# update() only queues work on the tensors' device and keeps small results there; nothing is copied to the host
# (which would stall a GPU every training step) until compute().

class SegmentationMeter:
    """Accumulates a K×K confusion matrix per image (not the pixels) and scores them in compute()."""

    def __init__(self, num_classes: int, empty: float = 1.0, with_hd95: bool = False,
                 spacing: Sequence[float] = (1.0, 1.0)) -> None:
        if num_classes < 2:
            raise ValueError("Segmentation needs at least two classes (background and one structure).")
        self.num_classes, self.empty, self.with_hd95, self.spacing = num_classes, empty, with_hd95, spacing
        self.reset()

    def reset(self) -> None:
        self._confusions: list[torch.Tensor] = []
        self._invalid: torch.Tensor | int = 0
        self._hd95: list[float] = []

    @torch.no_grad()
    def update(self, logits_or_pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: logits (N,K,H,W) or labels (N,H,W), with target labels (N,H,W); any device."""
        from_logits = logits_or_pred.ndim == target.ndim + 1
        # max().indices, not argmax(): on CPU argmax over the channel dim of NCHW is ~10x slower (torch 2.14)
        pred = logits_or_pred.max(dim=1).indices if from_logits else logits_or_pred
        confusion, invalid = _confusion_per_image(pred, target.to(pred.device), self.num_classes, from_logits)
        self._confusions.append(confusion)
        self._invalid = self._invalid + invalid
        if self.with_hd95:  # needs the masks on the host: the reason it is off by default
            pred_np, target_np = _numpy(pred) > 0, _numpy(target) > 0
            self._hd95 += [hausdorff95(p, t, self.spacing) for p, t in zip(pred_np, target_np)]

    def compute(self) -> dict[str, float]:
        """Mean foreground "dice"/"iou", "pixel_accuracy", "dice_<k>"/"iou_<k>" for k ≥ 1, and "hd95" if enabled."""
        if int(self._invalid):
            raise ValueError(f"Labels must lie in 0..{self.num_classes - 1}.")
        k = self.num_classes
        confusion = (torch.cat(self._confusions).cpu().numpy() if self._confusions
                     else np.zeros((0, k, k), dtype=np.int64))
        images = confusion.shape[0] or float("nan")  # no batches yet: every score is nan rather than 0
        dice = _dice(confusion, self.empty).sum(axis=0) / images
        iou = _iou(confusion, self.empty).sum(axis=0) / images
        pixels = confusion.sum()
        result = {"dice": float(dice[1:].mean()), "iou": float(iou[1:].mean()),
                  "pixel_accuracy": float(np.trace(confusion, axis1=-2, axis2=-1).sum() / pixels)
                  if pixels else float("nan")}
        for label in range(1, k):
            result[f"dice_{label}"], result[f"iou_{label}"] = float(dice[label]), float(iou[label])
        if self.with_hd95:
            finite = [d for d in self._hd95 if np.isfinite(d)]
            result["hd95"] = float(np.mean(finite)) if finite else float("nan")
        return result


class ClassificationMeter:
    """Keeps the class probabilities and targets (N×K numbers, for AUC) and scores them in compute()."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        self._probs: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of logits (N,K) and integer targets (N,); any device."""
        self._probs.append(torch.softmax(logits.detach().float(), dim=1))
        self._targets.append(target.detach().reshape(-1))

    def compute(self) -> dict[str, float]:
        """Scores so far: accuracy, balanced_accuracy, auc (ROC, macro one-vs-rest) and f1_macro."""
        probs, target = self._collected()
        confusion = confusion_matrix(probs.argmax(axis=1), target, self.num_classes)
        total = confusion.sum()
        return {"accuracy": float(np.trace(confusion) / total) if total else float("nan"),
                "balanced_accuracy": _balanced_accuracy(confusion),
                "auc": roc_auc(probs, target) if total else float("nan"),
                "f1_macro": _f1_macro(confusion)}

    def confusion(self) -> np.ndarray:
        """K×K counts so far: rows true, columns predicted."""
        probs, target = self._collected()
        return confusion_matrix(probs.argmax(axis=1), target, self.num_classes)

    def per_class(self) -> dict[str, np.ndarray]:
        """Per-class precision, recall, F1 and support so far."""
        return _precision_recall_f1(self.confusion())

    def _collected(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._probs:
            return np.zeros((0, self.num_classes), dtype=np.float32), np.zeros(0, dtype=np.int64)
        probs = torch.cat([p.cpu() for p in self._probs]).numpy()
        return probs, torch.cat([t.cpu() for t in self._targets]).numpy().astype(np.int64)


# ---------------------------------------------------------------- helpers

def _confusion_per_image(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                         pred_in_range: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K, K) confusion matrices counted on the tensors' device, plus the number of out-of-range labels.

    scatter_add instead of bincount: CUDA bincount reads the maximum back to size its output (a host sync).
    """
    n, k = target.shape[0], num_classes
    pred, target = pred.reshape(n, -1).long(), target.reshape(n, -1).long()
    if pred.shape != target.shape:
        raise ValueError(f"Prediction has {pred.shape[1]} pixels per image, target {target.shape[1]}.")
    offsets = torch.arange(n, device=pred.device).unsqueeze(1) * (k * k)
    code = target * k + pred
    # with 0 <= pred < k, the code is in [0, k²) exactly when the target label is in range
    valid = (code >= 0) & (code < k * k)
    if not pred_in_range:
        valid &= (pred >= 0) & (pred < k)
    spill = n * k * k                            # one extra bin collects out-of-range pixels
    index = torch.where(valid, code + offsets, spill).ravel()
    counts = torch.zeros(spill + 1, dtype=torch.long, device=pred.device)
    counts.scatter_add_(0, index, torch.ones_like(index))
    return counts[:spill].reshape(n, k, k), counts[spill]


def _numpy(array: ArrayLike) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def _labels(array: ArrayLike) -> np.ndarray:
    values = _numpy(array)
    return values if values.dtype == bool else values.astype(np.int64, copy=False)


def _check_range(labels: np.ndarray, num_classes: int) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"Labels must lie in 0..{num_classes - 1}, found {labels.min()}..{labels.max()}.")
