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
    # Changed with issue 12: images whose truth lacks a class no longer count 1.0 towards that class's Dice/IoU
    # (the old `empty=1.0` mean); they are left out, and a one-sided empty image costs the HD95 penalty.
    batches = seg_batches()
    meter = SegmentationMeter(3, with_hd95=True)
    for logits, target in batches:
        meter.update(logits, target)
    preds = torch.cat([logits.argmax(1) for logits, _ in batches]).numpy()
    targets = torch.cat([target for _, target in batches]).numpy()
    empty = [0, 3]                                   # the first image of each batch holds no structure
    assert all((preds[i] > 0).any() and not (targets[i] > 0).any() for i in empty)    # false structures there
    held = [1, 2, 4]                                 # the images that hold both classes
    dice = np.mean([dice_per_class(preds[i], targets[i], 3) for i in held], axis=0)
    iou = np.mean([iou_per_class(preds[i], targets[i], 3) for i in held], axis=0)
    hd = [16 * math.sqrt(2)] * 2 + [hausdorff95(preds[i] > 0, targets[i] > 0) for i in held]   # 2 penalties
    result = meter.compute()
    assert result["dice"] == pytest.approx(dice[1:].mean())
    assert result["iou"] == pytest.approx(iou[1:].mean())
    assert result["dice_2"] == pytest.approx(dice[2]) and result["iou_1"] == pytest.approx(iou[1])
    assert result["pixel_accuracy"] == pytest.approx(pixel_accuracy(preds, targets))
    assert result["hd95"] == pytest.approx(np.mean(hd)) and result["hd95_empty"] == 2
    assert (result["n"], result["dice_n"], result["empty_correct"], result["empty_total"]) == (5, 3, 0, 2)
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
    assert set(result) == {"accuracy", "balanced_accuracy", "auc", "f1_macro", "n"} and result["n"] == 20
    np.testing.assert_allclose(meter.per_class()["recall"], precision_recall_f1(pred, target.numpy(), 3)["recall"])


# ---------------------------------------------------------------- issue 12: honest conventions, n and intervals

def nothing_predicted_on_ten_slices() -> SegmentationMeter:
    """10 slices of 10×10, 7 of them empty, 3 with a 2×2 structure; the model predicts background everywhere."""
    target = torch.zeros(10, 10, 10, dtype=torch.long)
    target[7:, 4:6, 4:6] = 1
    meter = SegmentationMeter(2, with_hd95=True)
    meter.update(torch.zeros_like(target), target)
    return meter


def test_predicting_nothing_scores_dice_zero_not_the_share_of_empty_slices():
    result = nothing_predicted_on_ten_slices().compute(intervals=True)
    # the old convention gave the 7 empty slices Dice 1.0: (7·1 + 3·0) / 10 = 0.7 for a model that finds nothing
    assert result["dice"] == 0.0 and result["iou"] == 0.0 and result["dice_1"] == 0.0
    assert (result["empty_correct"], result["empty_total"], result["dice_n"], result["n"]) == (7, 7, 3, 10)
    assert result["dice_ci"] == [0.0, 0.0]                 # every structure image scores 0: no spread to show
    assert result["pixel_accuracy"] == pytest.approx(1 - 12 / 1000)   # 98.8 %: the accuracy paradox


def test_hd95_gives_the_diagonal_when_one_mask_is_empty_and_never_skips():
    result = nothing_predicted_on_ten_slices().compute()
    # 3 slices hold a structure the prediction misses: each scores the 10×10 diagonal; the 7 empty ones are
    # empty in both and left out. The old meter skipped the misses and reported nan (or 0.0 beside Dice 0.5).
    assert result["hd95_penalty"] == pytest.approx(math.sqrt(200))
    assert result["hd95"] == pytest.approx(math.sqrt(200)) and result["hd95_empty"] == 3
    # a false structure on an empty slice is penalised the same way, and no longer counts as correctly empty
    meter = SegmentationMeter(2, with_hd95=True, spacing=(2.0, 2.0))
    invented = torch.zeros(1, 10, 10, dtype=torch.long)
    invented[0, 0, 0] = 1
    meter.update(invented, torch.zeros_like(invented))
    result = meter.compute()
    assert result["hd95"] == pytest.approx(math.sqrt(800)) and result["hd95_empty"] == 1
    assert (result["empty_correct"], result["empty_total"]) == (0, 1) and math.isnan(result["dice"])


def test_half_right_dice_with_one_missed_slice_is_not_reported_with_hd95_zero():
    # slice 0 found exactly (Dice 1, HD95 0), slice 1 missed (Dice 0): the old meter said Dice 0.5 with HD95 0.0
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, 2:5, 2:5] = 1
    pred = target.clone()
    pred[1] = 0
    meter = SegmentationMeter(2, with_hd95=True)
    meter.update(pred, target)
    result = meter.compute()
    assert result["dice"] == pytest.approx(0.5)
    assert result["hd95"] == pytest.approx((0.0 + math.sqrt(128)) / 2) and result["hd95_empty"] == 1


def test_wilson_interval_by_hand():
    from engine.intervals import wilson_interval
    # 12 of 12 right: the naive p ± 1.96·sqrt(p(1-p)/n) says [1, 1]; Wilson's lower end is
    # (1 + z²/24 - z·sqrt(z²/576)) / (1 + z²/12) = (1 + 0.16006 - 0.16006) / 1.32012 ≈ 0.7575
    low, high = wilson_interval(12, 12)
    assert low == pytest.approx(0.7575, abs=1e-3) and high == 1.0
    low, high = wilson_interval(5, 10)             # symmetric around ½: ½ ± 0.2634
    assert low == pytest.approx(0.2366, abs=1e-3) and high == pytest.approx(0.7634, abs=1e-3)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_classification_meter_reports_n_and_intervals():
    # 8 healthy, 2 ill; always "healthy": accuracy 8/10, balanced accuracy (1 + 0) / 2
    target = torch.tensor([0] * 8 + [1] * 2)
    meter = ClassificationMeter(2)
    meter.update(torch.tensor([[2.0, 0.0]]).repeat(10, 1), target)
    result = meter.compute(intervals=True)
    assert result["n"] == 10
    from engine.intervals import wilson_interval
    assert result["accuracy_ci"] == pytest.approx(wilson_interval(8, 10))
    # balanced accuracy: Wilson on n_eff = K² / Σ 1/n_k = 4 / (1/8 + 1/2) = 6.4 cases, not on all 10
    assert result["balanced_accuracy_ci"] == pytest.approx(wilson_interval(0.5 * 6.4, 6.4))
    assert result["balanced_accuracy_ci"][0] < wilson_interval(5, 10)[0]       # wider than n = 10 would say
    assert "accuracy_ci" not in meter.compute()                                  # intervals only when asked


def test_dice_bootstrap_is_seeded_and_brackets_the_mean():
    from engine.intervals import bootstrap_interval
    values = np.array([0.2, 0.9, 0.8, 0.7, math.nan, 0.95, 0.6])   # nan: an image without the structure
    low, high = bootstrap_interval(values)
    assert bootstrap_interval(values) == [low, high]                 # same numbers, same interval
    assert 0.2 <= low < np.nanmean(values) < high <= 0.95
    # two classes: each resample averages per class over the images that hold it, then over classes
    two = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, math.nan]])   # averaging row means would give 0.625
    assert bootstrap_interval(two) == [pytest.approx(0.5), pytest.approx(0.5)]
    assert all(math.isnan(v) for v in bootstrap_interval(np.array([0.5, math.nan])))   # one image: no interval


def test_segmentation_meter_keeps_per_image_dice_for_the_bootstrap():
    target = torch.zeros(3, 4, 4, dtype=torch.long)
    target[:2, :2, :2] = 1                       # images 0 and 1 hold 4 px of structure, image 2 none
    pred = torch.zeros_like(target)
    pred[0, :2, :2] = 1                          # image 0 exact
    pred[1, :1, :2] = 1                          # image 1: 2 of 4 px → Dice 2·2 / (2 + 4) = ⅔
    meter = SegmentationMeter(2)
    meter.update(pred, target)
    np.testing.assert_allclose(meter.per_image_dice()[:, 0], [1.0, 2 / 3, math.nan])
    result = meter.compute(intervals=True)
    assert result["dice"] == pytest.approx(5 / 6) and result["empty_correct"] == 1
    assert result["dice_ci"][0] >= 2 / 3 and result["dice_ci"][1] <= 1.0


def test_headline_metric_and_notes():
    from engine.tasks import (
        HEADLINE_METRICS,
        METRIC_NOTES,
        auc_accuracy_note,
        headline_metric,
    )
    assert "pixel_accuracy" not in HEADLINE_METRICS["segmentation"] and "dice" in HEADLINE_METRICS["segmentation"]
    assert "accuracy paradox" in METRIC_NOTES["pixel_accuracy"]
    assert headline_metric("classification", {"chest": 30, "abdomen": 20}) == "accuracy"          # 1.5 : 1
    assert headline_metric("classification", {"chest": 31, "abdomen": 20}) == "balanced_accuracy"
    assert headline_metric("classification", [40, 10]) == "balanced_accuracy"
    assert headline_metric("segmentation", {}) == "dice"
    # always the common class of a 90/10 split: accuracy 0.9, AUC 0.5 → the note; agreeing scores → none
    assert auc_accuracy_note({"accuracy": 0.9, "balanced_accuracy": 0.5, "auc": 0.5}) == METRIC_NOTES["auc_vs_accuracy"]
    assert auc_accuracy_note({"accuracy": 0.55, "balanced_accuracy": 0.55, "auc": 0.95}) is not None
    assert auc_accuracy_note({"accuracy": 0.9, "balanced_accuracy": 0.88, "auc": 0.93}) is None
    assert auc_accuracy_note({"accuracy": 0.9, "auc": float("nan")}) is None
