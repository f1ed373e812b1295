"""Evaluation metrics for segmentation and classification: plain functions on arrays, plus running meters.

Conventions, used by every function and meter here:
- dice_per_class/iou_per_class score one label map: a class absent from both prediction and target is `empty`
  (default 1.0: nothing to find, nothing found); a class present in only one of them scores 0.
- SegmentationMeter (what runs report) scores each image on its own and averages over images, per class, as
  most medical segmentation papers do. Its headline "dice" (and "iou") is the mean Dice over the images whose
  TRUTH contains the structure — per class k ≥ 1 over the images that contain class k, then averaged over the
  classes — reported with "dice_n", the number of images that contain any structure. Images with nothing to
  find are not averaged in as 1.0: a model that predicts nothing on 10 slices, 7 of them empty, scores Dice 0
  (not 0.7). They are counted apart instead: "empty_correct" of "empty_total" images with no structure in the
  truth were left empty by the prediction ("12 of 14 empty slices correctly left empty"). A false structure on
  an empty image therefore lowers empty_correct (and costs the HD95 penalty), not Dice. With several classes an
  image is "empty" when its truth has no foreground at all; class k predicted on an image that holds other
  classes but not k is not scored in dice_<k> (it still costs the other classes the pixels it took).
- hausdorff95 is symmetric: the larger of the two directed 95th percentiles of boundary-to-boundary distances
  (as MONAI does). Both masks empty → 0.0; exactly one empty → nan, since there is no surface to measure to.
  The meter's "hd95" (foreground, label > 0) never skips that case: an image with structure in only one of
  prediction and truth scores the penalty "hd95_penalty" (the image diagonal, in units of the spacing: as far
  off as a mask can be) and is counted in "hd95_empty". Images empty in both are left out, as for Dice.
- Pixel accuracy pools all pixels; it is kept but is not a headline score (engine.tasks.METRIC_NOTES).
- Classification: per-class precision/recall/F1 with no denominator are 0; balanced accuracy averages recall over
  classes present in the target; macro F1 averages over classes present in the target or the prediction.
  roc_auc is nan when any class (both classes, for binary) is missing from the target.
- Meters report "n" (images scored) and, with compute(intervals=True), 95 % intervals as "<metric>_ci"
  [low, high] (engine.intervals): Wilson for accuracy; Wilson on an effective n for balanced accuracy; a seeded
  percentile bootstrap over images for dice, iou and hd95, from the per-image values the meter keeps.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from scipy import ndimage, stats

from engine.intervals import (
    balanced_accuracy_interval,
    bootstrap_interval,
    wilson_interval,
)

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

    def __init__(self, num_classes: int, with_hd95: bool = False, spacing: Sequence[float] = (1.0, 1.0)) -> None:
        if num_classes < 2:
            raise ValueError("Segmentation needs at least two classes (background and one structure).")
        self.num_classes, self.with_hd95, self.spacing = num_classes, with_hd95, spacing
        self.reset()

    def reset(self) -> None:
        self._confusions: list[torch.Tensor] = []
        self._invalid: torch.Tensor | int = 0
        self._hd95: list[float] = []            # per image; nan where both masks are empty (not scored)
        self._hd95_penalties: list[float] = []  # the penalty each image would get, so compute() can name it
        self._penalised = 0

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
            for p, t in zip(_numpy(pred) > 0, _numpy(target) > 0):
                self._add_hd95(p, t)

    def _add_hd95(self, pred: np.ndarray, target: np.ndarray) -> None:
        penalty = hd95_penalty(target.shape, self.spacing)
        self._hd95_penalties.append(penalty)
        if pred.any() != target.any():
            self._hd95.append(penalty)
            self._penalised += 1
        else:
            self._hd95.append(hausdorff95(pred, target, self.spacing) if target.any() else math.nan)

    def per_image_dice(self) -> np.ndarray:
        """(N, K-1) Dice of each foreground class on each image; nan where the truth lacks that class."""
        confusion = self._confusion()
        return _where_present(_dice(confusion, math.nan)[:, 1:], confusion)

    def per_image_hd95(self) -> np.ndarray:
        """(N,) foreground HD95 per image, penalties included; nan where both masks are empty."""
        return np.asarray(self._hd95, dtype=np.float64)

    def compute(self, intervals: bool = False) -> dict[str, float | int | list[float]]:
        """Scores: dice/iou (mean over images holding the structure), dice_<k>/iou_<k> for k ≥ 1, dice_n,
        empty_correct/empty_total, pixel_accuracy, n; hd95, hd95_empty, hd95_penalty if enabled; with
        `intervals`, <metric>_ci [low, high] for dice, iou and hd95."""
        confusion = self._confusion()
        dice = _where_present(_dice(confusion, math.nan)[:, 1:], confusion)
        iou = _where_present(_iou(confusion, math.nan)[:, 1:], confusion)
        truth_fg = confusion[:, 1:, :].sum(axis=(1, 2)) > 0
        pred_fg = confusion[:, :, 1:].sum(axis=(1, 2)) > 0
        pixels = confusion.sum()
        result: dict[str, Any] = {
            "dice": _mean_of_class_means(dice), "iou": _mean_of_class_means(iou),
            "pixel_accuracy": float(np.trace(confusion, axis1=-2, axis2=-1).sum() / pixels) if pixels else math.nan,
            "n": int(confusion.shape[0]), "dice_n": int(truth_fg.sum()),
            "empty_correct": int((~truth_fg & ~pred_fg).sum()), "empty_total": int((~truth_fg).sum())}
        for label in range(1, self.num_classes):
            result[f"dice_{label}"] = _nanmean(dice[:, label - 1])
            result[f"iou_{label}"] = _nanmean(iou[:, label - 1])
        if self.with_hd95:
            result["hd95"] = _nanmean(self.per_image_hd95())
            result["hd95_empty"] = self._penalised
            result["hd95_penalty"] = max(self._hd95_penalties, default=math.nan)
        if intervals:
            result["dice_ci"], result["iou_ci"] = bootstrap_interval(dice), bootstrap_interval(iou)
            if self.with_hd95:
                result["hd95_ci"] = bootstrap_interval(self.per_image_hd95())
        return result

    def _confusion(self) -> np.ndarray:
        if int(self._invalid):
            raise ValueError(f"Labels must lie in 0..{self.num_classes - 1}.")
        k = self.num_classes
        return (torch.cat(self._confusions).cpu().numpy() if self._confusions
                else np.zeros((0, k, k), dtype=np.int64))


def hd95_penalty(shape: Sequence[int], spacing: Sequence[float] = (1.0, 1.0)) -> float:
    """HD95 given when exactly one of prediction and truth is empty: the image diagonal, in units of `spacing`."""
    return float(math.hypot(*(size * step for size, step in zip(shape, spacing))))


def _where_present(scores: np.ndarray, confusion: np.ndarray) -> np.ndarray:
    """(N, K-1) foreground scores, nan where the image's truth lacks the class (not scored there)."""
    present = confusion[:, 1:, :].sum(axis=-1) > 0
    return np.where(present, scores, math.nan)


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def _mean_of_class_means(scores: np.ndarray) -> float:
    """Mean over classes of each class's mean over the images that hold it; nan when no image holds any."""
    per_class = [_nanmean(scores[:, c]) for c in range(scores.shape[1])]
    return _nanmean(np.asarray(per_class, dtype=np.float64))


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

    def compute(self, intervals: bool = False) -> dict[str, float | int | list[float]]:
        """Scores so far: accuracy, balanced_accuracy, auc (ROC, macro one-vs-rest), f1_macro and n; with
        `intervals`, "accuracy_ci" and "balanced_accuracy_ci" [low, high]."""
        probs, target = self._collected()
        confusion = confusion_matrix(probs.argmax(axis=1), target, self.num_classes)
        total = int(confusion.sum())
        result: dict[str, Any] = {
            "accuracy": float(np.trace(confusion) / total) if total else math.nan,
            "balanced_accuracy": _balanced_accuracy(confusion),
            "auc": roc_auc(probs, target) if total else math.nan,
            "f1_macro": _f1_macro(confusion), "n": total}
        if intervals:
            result["accuracy_ci"] = wilson_interval(float(np.trace(confusion)), total)
            result["balanced_accuracy_ci"] = balanced_accuracy_interval(confusion)
        return result

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
