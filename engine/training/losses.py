"""Loss catalog: name → builder of `loss(logits, target)` for classification (N,K) and segmentation (N,K,H,W).

Targets are class indices: (N,) or (N,H,W). Every loss turns autocast off and computes in float32, so fp16/bf16
logits from a mixed-precision forward pass never overflow in exp/log. All losses return a float32 scalar.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.errors import UserError
from engine.tasks import TASKS

LossFn = Callable[[Tensor, Tensor], Tensor]
DICE_EPS = 1e-5      # keeps 0/0 finite: a class absent from target and prediction scores Dice 1
FOCAL_GAMMA = 2.0


@dataclass(frozen=True)
class LossSpec:
    """A catalog entry: UI text plus `build(num_classes, class_weights) -> loss(logits, target)`."""

    name: str
    title: str
    tasks: tuple[str, ...]
    note: str
    build: Callable[[int, Tensor | None], LossFn]


# ---------------------------------------------------------------- loss functions

def _in_float32(loss: LossFn) -> LossFn:
    """Run a loss with autocast off on float32 logits and integer targets."""
    def run(logits: Tensor, target: Tensor) -> Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return loss(logits.float(), target.long())
    return run


def _on(weights: Tensor | None, like: Tensor) -> Tensor | None:
    return None if weights is None else weights.to(device=like.device, dtype=torch.float32)


def _weighted_mean(per_item: Tensor, target: Tensor, weights: Tensor | None) -> Tensor:
    """Mean of per-pixel/per-sample losses; with class weights, normalised the way F.cross_entropy does."""
    if weights is None:
        return per_item.mean()
    w = weights[target]
    return (w * per_item).sum() / w.sum()


def cross_entropy(weights: Tensor | None = None) -> LossFn:
    """Softmax cross-entropy, optionally weighted per class."""
    return _in_float32(lambda logits, target: F.cross_entropy(logits, target, weight=_on(weights, logits)))


def focal(weights: Tensor | None = None, gamma: float = FOCAL_GAMMA) -> LossFn:
    """Focal loss -w_t (1 - p_t)^gamma log p_t; gamma = 0 gives cross-entropy exactly."""
    def loss(logits: Tensor, target: Tensor) -> Tensor:
        log_p = F.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
        per_item = -((1.0 - log_p.exp()).clamp_min(0.0) ** gamma) * log_p
        return _weighted_mean(per_item, target, _on(weights, logits))
    return _in_float32(loss)


def binary_cross_entropy(weights: Tensor | None = None) -> LossFn:
    """BCE with logits. Two classes: sigmoid of the logit gap z1 - z0; more classes: one sigmoid per class.

    The gap is used for K=2 (not the foreground channel alone) because argmax over the two outputs then agrees
    with p > 0.5; mathematically it equals two-class cross-entropy. K>2 is one-vs-rest, averaged over classes.
    """
    def loss(logits: Tensor, target: Tensor) -> Tensor:
        if logits.shape[1] == 2:
            per_item = F.binary_cross_entropy_with_logits(
                logits[:, 1] - logits[:, 0], (target == 1).float(), reduction="none")
        else:
            one_hot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).float()
            per_item = F.binary_cross_entropy_with_logits(logits, one_hot, reduction="none").mean(dim=1)
        return _weighted_mean(per_item, target, _on(weights, logits))
    return _in_float32(loss)


def soft_dice(eps: float = DICE_EPS) -> LossFn:
    """1 - soft Dice of softmax probabilities, averaged over foreground classes (1..K-1).

    Sums run over the whole batch, not per image, so images without a class don't produce 0/0 spikes.
    """
    def loss(logits: Tensor, target: Tensor) -> Tensor:
        if logits.ndim < 3:
            raise ValueError("Dice loss needs per-pixel logits (N, K, H, W).")
        probs = F.softmax(logits, dim=1)
        one_hot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).float()
        dims = (0, *range(2, logits.ndim))
        intersection = (probs * one_hot).sum(dims)
        total = probs.sum(dims) + one_hot.sum(dims)
        dice = (2 * intersection + eps) / (total + eps)
        return 1.0 - dice[1:].mean()
    return _in_float32(loss)


def ce_plus_dice(weights: Tensor | None = None) -> LossFn:
    """Cross-entropy (optionally weighted) plus soft Dice loss."""
    ce, dice = cross_entropy(weights), soft_dice()
    return lambda logits, target: ce(logits, target) + dice(logits, target)


# ---------------------------------------------------------------- catalog

BOTH = TASKS
SEGMENTATION = ("segmentation",)

LOSSES: dict[str, LossSpec] = {spec.name: spec for spec in (
    LossSpec("ce", "Cross-entropy", BOTH,
             "Penalises low probability on the true class; class weights counter imbalance.",
             lambda k, w: cross_entropy(w)),
    LossSpec("bce", "Binary cross-entropy", BOTH,
             "One sigmoid per class (one-vs-rest); with two classes it is cross-entropy on the logit gap.",
             lambda k, w: binary_cross_entropy(w)),
    LossSpec("dice", "Dice", SEGMENTATION,
             "Maximises overlap directly, so a small structure counts as much as a large background.",
             lambda k, w: soft_dice()),
    LossSpec("ce_dice", "Cross-entropy + Dice", SEGMENTATION,
             "Stable gradients from cross-entropy plus Dice's focus on overlap; a strong segmentation default.",
             lambda k, w: ce_plus_dice(w)),
    LossSpec("focal", "Focal", BOTH,
             "Down-weights easy examples ((1-p)^2) so training concentrates on hard ones (Lin et al., 2017).",
             lambda k, w: focal(w)),
)}


def losses_for(task: str) -> list[LossSpec]:
    """The losses that apply to a task, in catalog order."""
    return [spec for spec in LOSSES.values() if task in spec.tasks]


def build_loss(name: str, task: str, num_classes: int, class_weights: Tensor | None = None) -> LossFn:
    """Build `loss(logits, target)`; UserError when the name is unknown or does not fit the task."""
    if task not in TASKS:
        raise UserError(f"Task must be one of {', '.join(TASKS)}, not '{task}'.")
    if name not in LOSSES:
        raise UserError(f"Unknown loss '{name}'; choose from {', '.join(s.name for s in losses_for(task))}.")
    spec = LOSSES[name]
    if task not in spec.tasks:
        raise UserError(f"The {spec.title} loss works only for {' and '.join(spec.tasks)}; "
                        f"choose one of {', '.join(s.name for s in losses_for(task))} for {task}.")
    if num_classes < 2:
        raise UserError("Training needs at least two classes; check the dataset's labels.")
    if class_weights is not None and class_weights.numel() != num_classes:
        raise ValueError(f"Got {class_weights.numel()} class weights for {num_classes} classes.")
    return spec.build(num_classes, class_weights)


def class_weights_from_counts(counts: list[int]) -> Tensor:
    """Inverse-frequency weights scaled to mean 1 over the classes present; absent classes get 0."""
    c = torch.as_tensor(counts, dtype=torch.float64)
    if c.ndim != 1 or c.numel() == 0 or bool((c < 0).any()):
        raise ValueError(f"Class counts must be a non-empty list of non-negative numbers, got {counts}.")
    present = c > 0
    if not present.any():
        return torch.ones(c.numel(), dtype=torch.float32)
    weights = torch.zeros_like(c)
    weights[present] = 1.0 / c[present]
    weights *= present.sum() / weights.sum()
    return weights.float()
