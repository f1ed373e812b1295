"""Metrics against hand-computed values, and meters over batches against the one-shot functions."""
import math

import numpy as np
import pytest
import torch

from engine.metrics import (
    ClassificationMeter,
    SegmentationMeter,
    accuracy,
    balanced_accuracy,
    confusion_matrix,
    dice_per_class,
    hausdorff95,
    iou_per_class,
    pixel_accuracy,
    precision_recall_f1,
    roc_auc,
)


def test_confusion_matrix_rows_are_truth_columns_prediction():
    # pairs (true, pred): (0,0) (1,1) (2,1) (2,2)
    cm = confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 3)
    np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 1, 0], [0, 1, 1]])
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)


# 4×4 maps: target class 1 = rows 0-1 × cols 0-1 (4 px); prediction class 1 = rows 0-1 × cols 1-2 (4 px).
TARGET = np.zeros((4, 4), dtype=np.int64)
TARGET[0:2, 0:2] = 1
PRED = np.zeros((4, 4), dtype=np.int64)
PRED[0:2, 1:3] = 1


def test_dice_and_iou_on_a_known_overlap():
    # class 1: |P∩T| = 2 (column 1, rows 0-1); Dice = 2·2/(4+4) = 0.5; IoU = 2/(4+4-2) = 1/3
    # class 0: |P∪T| of class 1 is 6 px, so background overlap = 16-6 = 10; Dice = 20/(12+12) = 5/6; IoU = 10/14
    # class 2: absent from both -> `empty`
    np.testing.assert_allclose(dice_per_class(PRED, TARGET, 3), [5 / 6, 0.5, 1.0])
    np.testing.assert_allclose(iou_per_class(PRED, TARGET, 3), [10 / 14, 1 / 3, 1.0])
    np.testing.assert_allclose(dice_per_class(PRED, TARGET, 3, empty=math.nan)[2], math.nan)
    # correct pixels: 10 background + 2 foreground = 12 of 16
    assert pixel_accuracy(PRED, TARGET) == pytest.approx(0.75)


def square(offset_col: int = 0) -> np.ndarray:
    mask = np.zeros((32, 32), dtype=bool)
    mask[10:20, 10 + offset_col:20 + offset_col] = True
    return mask


def test_hausdorff95_of_squares_offset_by_three_pixels():
    # Every boundary pixel of one square is within 3 px of the other's boundary, and a whole side
    # (10 of 36 boundary pixels, well over 5 %) sits exactly 3 px away, so the 95th percentile is 3 both ways.
    assert hausdorff95(square(0), square(3)) == pytest.approx(3.0)
    # with columns 0.5 mm apart the same shift is 1.5 mm
    assert hausdorff95(square(0), square(3), spacing=(1.0, 0.5)) == pytest.approx(1.5)


def test_hausdorff95_ignores_a_single_outlier_and_handles_empty_masks():
    # one stray pixel far away is 1 of 37 boundary pixels (< 5 %): max distance is large, HD95 stays 0
    with_outlier = square(0)
    with_outlier[30, 30] = True
    assert hausdorff95(with_outlier, square(0)) == pytest.approx(0.0)
    empty = np.zeros((32, 32), dtype=bool)
    assert hausdorff95(empty, empty) == 0.0
    assert math.isnan(hausdorff95(square(0), empty))
    assert math.isnan(hausdorff95(empty, square(0)))


def test_roc_auc_binary_with_ties_matches_pair_count():
    scores = np.array([0.1, 0.4, 0.4, 0.8, 0.4])
    target = np.array([0, 0, 1, 1, 1])
    # positives 0.4, 0.8, 0.4 vs negatives 0.1, 0.4; a pair scores 1 if pos > neg, ½ if tied:
    # 0.4: 1 + ½; 0.8: 1 + 1; 0.4: 1 + ½  -> 5 of 6 pairs
    probs = np.stack([1 - scores, scores], axis=1)
    assert roc_auc(probs, target) == pytest.approx(5 / 6)
    assert math.isnan(roc_auc(probs, np.ones(5, dtype=int)))


def test_roc_auc_multiclass_is_macro_one_vs_rest():
    probs = np.array([[.6, .3, .1], [.2, .5, .3], [.3, .3, .4], [.5, .2, .3]])
    target = np.array([0, 1, 2, 1])
    # class 0: 0.6 beats 0.2, 0.3, 0.5 -> 1; class 1: positives 0.5, 0.2 vs negatives 0.3, 0.3 -> 2/4;
    # class 2: 0.4 beats 0.1, 0.3, 0.3 -> 1; macro mean = (1 + 0.5 + 1) / 3
    assert roc_auc(probs, target) == pytest.approx(2.5 / 3)
    assert math.isnan(roc_auc(probs, np.array([0, 1, 1, 1])))   # class 2 absent


def test_accuracy_and_balanced_accuracy_on_imbalanced_labels():
    target = np.array([0] * 8 + [1] * 2)
    pred = np.zeros(10, dtype=int)
    # always "healthy": 8/10 correct, but recall is 1 for class 0 and 0 for class 1 -> balanced (1 + 0) / 2
    assert accuracy(pred, target) == pytest.approx(0.8)
    assert balanced_accuracy(pred, target, 2) == pytest.approx(0.5)
    # class 2 never occurs in the target, so it does not drag the mean down
    assert balanced_accuracy(pred, target, 3) == pytest.approx(0.5)


def test_precision_recall_f1_per_class():
    # (true, pred): (0,0) (1,0) (1,1) (1,1) (2,1) (2,2); class 3 never occurs
    # class 0: tp 1 fp 1 fn 0 -> P ½ R 1; class 1: tp 2 fp 1 fn 1 -> P ⅔ R ⅔; class 2: tp 1 fp 0 fn 1 -> P 1 R ½
    result = precision_recall_f1(np.array([0, 0, 1, 1, 1, 2]), np.array([0, 1, 1, 1, 2, 2]), 4)
    np.testing.assert_allclose(result["precision"], [0.5, 2 / 3, 1.0, 0.0])
    np.testing.assert_allclose(result["recall"], [1.0, 2 / 3, 0.5, 0.0])
    np.testing.assert_allclose(result["f1"], [2 / 3, 2 / 3, 2 / 3, 0.0])   # F1 = 2tp / (2tp + fp + fn)
    np.testing.assert_array_equal(result["support"], [1, 3, 2, 0])


def seg_batches(k: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    batches = []
    for n in (3, 2):
        target = torch.zeros(n, 16, 16, dtype=torch.long)
        target[:, 4:12, 3:10] = 1
        target[:, 10:14, 8:15] = 2
        target[0, :, :] = 0                    # one image with no structure at all
        logits = torch.randn(n, k, 16, 16, generator=generator) + 3 * torch.nn.functional.one_hot(
            target, k).movedim(-1, 1)
        batches.append((logits, target))
    return batches


def test_segmentation_meter_equals_per_image_functions():
    batches = seg_batches()
    meter = SegmentationMeter(3, with_hd95=True)
    for logits, target in batches:
        meter.update(logits, target)
    preds = torch.cat([logits.argmax(1) for logits, _ in batches]).numpy()
    targets = torch.cat([target for _, target in batches]).numpy()
    dice = np.mean([dice_per_class(p, t, 3) for p, t in zip(preds, targets)], axis=0)
    iou = np.mean([iou_per_class(p, t, 3) for p, t in zip(preds, targets)], axis=0)
    hd = [hausdorff95(p > 0, t > 0) for p, t in zip(preds, targets)]
    result = meter.compute()
    assert result["dice"] == pytest.approx(dice[1:].mean())
    assert result["iou"] == pytest.approx(iou[1:].mean())
    assert result["dice_2"] == pytest.approx(dice[2]) and result["iou_1"] == pytest.approx(iou[1])
    assert result["pixel_accuracy"] == pytest.approx(pixel_accuracy(preds, targets))
    assert result["hd95"] == pytest.approx(np.nanmean(hd))
    assert "dice_0" not in result and "hd95" not in SegmentationMeter(3).compute()


def test_segmentation_meter_accepts_labels_and_averages_per_image():
    meter = SegmentationMeter(2)
    big = torch.zeros(1, 8, 8, dtype=torch.long)
    big[0, :6, :6] = 1
    small = torch.zeros(1, 8, 8, dtype=torch.long)
    small[0, 0, 0] = 1
    meter.update(big, big)                               # perfect on a large object: Dice 1
    meter.update(torch.zeros_like(small), small)         # misses a 1-px object: Dice 0
    # per-image mean is (1 + 0) / 2; pooling the pixels instead would give 2·36 / (36 + 37) ≈ 0.99
    assert meter.compute()["dice"] == pytest.approx(0.5)
    meter.reset()
    assert math.isnan(meter.compute()["dice"])
    for pred in (torch.full((1, 8, 8), 2), torch.zeros(1, 2, 8, 8)):   # label 2 in a two-class meter
        meter.reset()
        meter.update(pred, big if pred.ndim == 3 else big * 2)
        with pytest.raises(ValueError):
            meter.compute()


def test_classification_meter_over_two_batches_equals_functions():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(20, 3, generator=generator)
    target = torch.arange(20) % 3
    meter = ClassificationMeter(3)
    meter.update(logits[:12], target[:12])
    meter.update(logits[12:].to(torch.bfloat16), target[12:])   # AMP logits are welcome
    pred = torch.cat([logits[:12], logits[12:].to(torch.bfloat16).float()]).argmax(1).numpy()
    probs = torch.softmax(torch.cat([logits[:12], logits[12:].to(torch.bfloat16).float()]), 1).numpy()
    result = meter.compute()
    assert result["accuracy"] == pytest.approx(accuracy(pred, target.numpy()))
    assert result["balanced_accuracy"] == pytest.approx(balanced_accuracy(pred, target.numpy(), 3))
    assert result["auc"] == pytest.approx(roc_auc(probs, target.numpy()))
    assert result["f1_macro"] == pytest.approx(precision_recall_f1(pred, target.numpy(), 3)["f1"].mean())
    np.testing.assert_array_equal(meter.confusion(), confusion_matrix(pred, target.numpy(), 3))
    assert set(result) == {"accuracy", "balanced_accuracy", "auc", "f1_macro"}
    np.testing.assert_allclose(meter.per_class()["recall"], precision_recall_f1(pred, target.numpy(), 3)["recall"])
