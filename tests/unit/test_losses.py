"""Losses: values against hand computation, gradients, class weights, task checks, mixed precision."""
import math

import pytest
import torch
import torch.nn.functional as F

from engine.errors import UserError
from engine.training.losses import LOSSES, build_loss, class_weights_from_counts, focal, losses_for

CLS_LOGITS = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
CLS_TARGET = torch.tensor([0, 1])
# per-sample CE: sample 0: -log(e^2 / (e^2 + 2)) = log(1 + 2 e^-2); sample 1: -log(1/3) = log 3
CE_0, CE_1 = math.log(1 + 2 * math.exp(-2)), math.log(3)


def seg_batch(k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(2, k, 4, 4, requires_grad=True), torch.randint(0, k, (2, 4, 4))


def test_cross_entropy_matches_hand_computation():
    loss = build_loss("ce", "classification", 3)
    assert loss(CLS_LOGITS, CLS_TARGET).item() == pytest.approx((CE_0 + CE_1) / 2, rel=1e-6)


def test_class_weights_reweight_cross_entropy():
    weights = torch.tensor([1.0, 3.0, 1.0])
    loss = build_loss("ce", "classification", 3, class_weights=weights)
    # weighted mean: (w_0 * CE_0 + w_1 * CE_1) / (w_0 + w_1) with the weights of each sample's true class
    assert loss(CLS_LOGITS, CLS_TARGET).item() == pytest.approx((1 * CE_0 + 3 * CE_1) / 4, rel=1e-6)


def test_dice_is_zero_for_perfect_and_one_for_disjoint_predictions():
    target = torch.tensor([[[0, 1], [1, 2]]])                       # (1, 2, 2), labels 0..2
    perfect = 50.0 * F.one_hot(target, 3).movedim(-1, 1).float()
    disjoint = 50.0 * F.one_hot((target + 1) % 3, 3).movedim(-1, 1).float()
    dice = build_loss("dice", "segmentation", 3)
    assert dice(perfect, target).item() < 1e-4
    assert dice(disjoint, target).item() > 0.999


def test_dice_matches_hand_computation_for_uniform_probabilities():
    # zero logits, 2 classes -> p = 0.5 everywhere; 4 pixels, 2 of them foreground:
    # intersection = 0.5 * 2 = 1, sum(p) + sum(t) = 2 + 2 = 4, Dice = 2 * 1 / 4 = 0.5, loss = 0.5
    target = torch.tensor([[[1, 1], [0, 0]]])
    logits = torch.zeros(1, 2, 2, 2)
    assert build_loss("dice", "segmentation", 2)(logits, target).item() == pytest.approx(0.5, abs=1e-5)


def test_ce_dice_is_the_sum():
    logits, target = seg_batch()
    total = build_loss("ce_dice", "segmentation", 3)(logits, target)
    parts = build_loss("ce", "segmentation", 3)(logits, target) + build_loss("dice", "segmentation", 3)(logits, target)
    assert total.item() == pytest.approx(parts.item(), rel=1e-6)


@pytest.mark.parametrize("weights", [None, torch.tensor([0.5, 2.0, 1.0])])
def test_focal_with_gamma_zero_equals_cross_entropy(weights):
    logits, target = seg_batch()
    expected = F.cross_entropy(logits, target, weight=weights)
    assert focal(weights, gamma=0.0)(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_focal_matches_hand_computation():
    # p_t = 1/3 for sample 1: (1 - 1/3)^2 * log 3; sample 0: p_t = e^2 / (e^2 + 2)
    p0 = math.exp(2) / (math.exp(2) + 2)
    expected = ((1 - p0) ** 2 * CE_0 + (2 / 3) ** 2 * CE_1) / 2
    assert build_loss("focal", "classification", 3)(CLS_LOGITS, CLS_TARGET).item() == pytest.approx(expected, rel=1e-6)


def test_bce_two_classes_equals_cross_entropy_on_the_logit_gap():
    logits = torch.tensor([[1.0, 3.0], [0.5, -1.0]])
    target = torch.tensor([1, 0])
    # sigmoid(z1 - z0) is the softmax probability of class 1, so BCE on the gap is two-class CE
    expected = F.cross_entropy(logits, target)
    assert build_loss("bce", "classification", 2)(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_bce_many_classes_is_one_vs_rest():
    # zero logits: every sigmoid is 0.5, so each of the K binary terms is log 2 whatever the target
    loss = build_loss("bce", "segmentation", 3)(torch.zeros(1, 3, 2, 2), torch.tensor([[[0, 1], [2, 0]]]))
    assert loss.item() == pytest.approx(math.log(2), rel=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_gives_finite_gradients(name):
    logits, target = seg_batch()
    loss = build_loss(name, "segmentation", 3, class_weights=torch.tensor([1.0, 2.0, 0.5]))(logits, target)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_are_float32_and_safe_under_low_precision(name):
    logits, target = seg_batch()
    reference = build_loss(name, "segmentation", 3)(logits, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = build_loss(name, "segmentation", 3)(logits.to(torch.bfloat16), target)
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(reference.item(), rel=0.05, abs=0.02)
    huge = torch.full((1, 3, 2, 2), 60000.0, dtype=torch.float16)    # exp() of this overflows in fp16
    huge[:, 0] = -60000.0
    assert torch.isfinite(build_loss(name, "segmentation", 3)(huge, torch.zeros(1, 2, 2, dtype=torch.long)))


def test_segmentation_only_losses_refuse_classification():
    assert {s.name for s in losses_for("classification")} == {"ce", "bce", "focal"}
    assert {s.name for s in losses_for("segmentation")} == set(LOSSES)
    with pytest.raises(UserError, match="segmentation"):
        build_loss("dice", "classification", 2)
    with pytest.raises(UserError):
        build_loss("hinge", "classification", 2)
    with pytest.raises(UserError):
        build_loss("ce", "classification", 1)


def test_class_weights_from_counts_are_inverse_frequency_with_mean_one():
    # present counts 10, 30, 60 -> 1/c = 0.1, 0.0333, 0.01667 (sum 0.15); scaled by 3 / 0.15 = 20
    weights = class_weights_from_counts([10, 30, 0, 60])
    assert weights.dtype == torch.float32
    assert weights.tolist() == pytest.approx([2.0, 2 / 3, 0.0, 1 / 3], rel=1e-6)
    assert class_weights_from_counts([5, 5]).tolist() == [1.0, 1.0]
