"""Diagnosis rules on crafted metric histories: each rule fires on its failure, and a healthy run gives nothing."""
from __future__ import annotations

import math

import pytest

from engine.diagnosis import (
    compare_runs,
    diagnose,
    noise_margin,
    validation_count,
    within_noise_of_default,
)
from engine.intervals import wilson_interval

SEG_MANIFEST = {"task": "segmentation", "classes": ["background", "ventricle"], "num_classes": 2,
                "split_counts": {"train": 200, "val": 50, "test": 20}}
CLS_MANIFEST = {"task": "classification", "classes": ["abdomen", "chest"], "num_classes": 2,
                "split_counts": {"train": 200, "val": 50, "test": 20}}


def history(steps_per_epoch: int = 0, **series: list) -> list[dict]:
    """Metric rows as the store keeps them: series named "split__name", one value per epoch from epoch 1."""
    rows, step = [], 0
    epochs = max(len(values) for values in series.values())
    for epoch in range(1, epochs + 1):
        for _ in range(steps_per_epoch):
            step += 1
            rows.append({"epoch": epoch, "step": step, "split": "train", "name": "loss", "value": 0.5})
        for key, values in series.items():
            if epoch <= len(values):
                split, name = key.split("__")
                rows.append({"epoch": epoch, "step": step, "split": split, "name": name, "value": values[epoch - 1]})
    return rows


def run(task: str = "segmentation", best: dict | None = None, **fields) -> dict:
    monitor = "dice" if task == "segmentation" else "accuracy"
    return {"id": "run-a", "task": task, "status": "done", "message": "", "dataset_id": "ds", "best_metric": monitor,
            "config": {"lr": 0.001, "monitor": monitor, "task": task}, "best": best or {}, **fields}


def kinds(findings: list[dict]) -> list[str]:
    assert all(set(f) == {"kind", "message"} and f["message"].strip() for f in findings)
    return [f["kind"] for f in findings]


# A segmentation run that learns: both losses fall, Dice rises, validation follows training closely.
HEALTHY_SEG = dict(
    train__epoch_loss=[0.80, 0.55, 0.42, 0.35, 0.30, 0.27, 0.25, 0.23, 0.22, 0.21],
    val__loss=[0.82, 0.58, 0.45, 0.38, 0.33, 0.31, 0.30, 0.31, 0.30, 0.30],      # settles, wobbles a little
    train__dice=[0.30, 0.55, 0.68, 0.75, 0.80, 0.83, 0.85, 0.86, 0.87, 0.88],
    val__dice=[0.28, 0.52, 0.65, 0.72, 0.77, 0.80, 0.82, 0.83, 0.84, 0.84],
    val__pixel_accuracy=[0.95, 0.97, 0.98, 0.98, 0.99, 0.99, 0.99, 0.99, 0.99, 0.99],
)
HEALTHY_SEG_BEST = {"dice": 0.84, "iou": 0.74, "pixel_accuracy": 0.99, "loss": 0.30}

HEALTHY_CLS = dict(
    train__epoch_loss=[0.69, 0.55, 0.45, 0.38, 0.33, 0.30],
    val__loss=[0.68, 0.56, 0.47, 0.41, 0.38, 0.37],
    train__balanced_accuracy=[0.60, 0.72, 0.80, 0.85, 0.88, 0.90],
    val__balanced_accuracy=[0.58, 0.70, 0.78, 0.82, 0.85, 0.86],
)
HEALTHY_CLS_BEST = {"accuracy": 0.86, "balanced_accuracy": 0.86, "auc": 0.93, "confusion": [[22, 3], [4, 21]]}


def test_healthy_runs_give_no_finding():
    assert diagnose(run(best=HEALTHY_SEG_BEST), history(steps_per_epoch=5, **HEALTHY_SEG), SEG_MANIFEST) == []
    assert diagnose(run("classification", HEALTHY_CLS_BEST), history(**HEALTHY_CLS), CLS_MANIFEST) == []
    # A run after its first epoch (every run starts poor), and one that has not finished an epoch, are not
    # alarming either.
    first = {key: values[:1] for key, values in HEALTHY_SEG.items()}
    assert diagnose(run(best={"dice": 0.28, "pixel_accuracy": 0.95}, status="running"), history(**first),
                    SEG_MANIFEST) == []
    assert diagnose(run(status="queued"), [], SEG_MANIFEST) == []


# ---------------------------------------------------------------- one class for everything

def test_predicts_background_is_the_accuracy_paradox():
    metrics = history(train__epoch_loss=[0.40, 0.20, 0.15], val__loss=[0.35, 0.18, 0.14],
                      train__dice=[0.00, 0.00, 0.01], val__dice=[0.00, 0.00, 0.00],
                      val__pixel_accuracy=[0.97, 0.98, 0.98])
    findings = diagnose(run(best={"dice": 0.0, "pixel_accuracy": 0.98}), metrics, SEG_MANIFEST)
    assert kinds(findings)[0] == "predicts_background"
    assert "98%" in findings[0]["message"] and "background" in findings[0]["message"]
    assert "underfitting" in kinds(findings)          # it cannot even fit its training images


def test_no_dice_with_low_pixel_accuracy_is_not_the_background_answer():
    """Marking everything as foreground also scores Dice ≈ 0, but not by answering background."""
    metrics = history(val__dice=[0.01], val__pixel_accuracy=[0.30])
    assert "predicts_background" not in kinds(diagnose(run(best={"dice": 0.01, "pixel_accuracy": 0.3}),
                                                       metrics, SEG_MANIFEST))


def test_majority_class_from_a_single_predicted_column():
    best = {"accuracy": 0.8, "balanced_accuracy": 0.5, "confusion": [[40, 0], [10, 0]]}
    findings = diagnose(run("classification", best), history(val__balanced_accuracy=[0.5]), CLS_MANIFEST)
    assert kinds(findings)[0] == "majority_class"
    assert "'abdomen'" in findings[0]["message"] and "100%" in findings[0]["message"]


def test_majority_class_from_chance_balanced_accuracy():
    confusion = [[7, 7, 6], [6, 7, 7], [7, 6, 7]]          # spread out, but no better than guessing
    best = {"accuracy": 0.35, "balanced_accuracy": 0.35, "confusion": confusion}
    findings = diagnose(run("classification", best), history(val__balanced_accuracy=[0.35]), None)
    assert kinds(findings)[0] == "majority_class" and "3 classes" in findings[0]["message"]
    better = {**best, "balanced_accuracy": 0.6, "confusion": [[12, 4, 4], [4, 12, 4], [4, 4, 12]]}
    assert "majority_class" not in kinds(diagnose(run("classification", better), history(val__loss=[1.0]), None))


# ---------------------------------------------------------------- fitting

def test_overfitting_says_since_which_epoch():
    metrics = history(train__epoch_loss=[0.70, 0.50, 0.38, 0.30, 0.24, 0.19, 0.15, 0.12, 0.10, 0.08],
                      val__loss=[0.72, 0.55, 0.45, 0.42, 0.44, 0.47, 0.50, 0.53, 0.57, 0.60],
                      train__dice=[0.5, 0.6, 0.7, 0.75, 0.8, 0.82, 0.84, 0.86, 0.88, 0.9],
                      val__dice=[0.5, 0.6, 0.68, 0.7, 0.7, 0.7, 0.69, 0.69, 0.68, 0.68],
                      val__pixel_accuracy=[0.98] * 10)
    findings = diagnose(run(best={"dice": 0.7, "pixel_accuracy": 0.98}), metrics, SEG_MANIFEST)
    assert kinds(findings) == ["overfitting"]
    assert "Since epoch 4" in findings[0]["message"] and "augmentation" in findings[0]["message"]


def test_overfitting_from_a_growing_train_validation_gap():
    metrics = history(train__epoch_loss=[0.6, 0.4, 0.3, 0.2, 0.15, 0.1],
                      val__loss=[0.6, 0.5, 0.45, 0.44, 0.44, 0.43],        # flat: the loss rule stays quiet
                      train__balanced_accuracy=[0.60, 0.75, 0.85, 0.92, 0.97, 0.99],
                      val__balanced_accuracy=[0.58, 0.68, 0.70, 0.71, 0.72, 0.72])
    best = {"accuracy": 0.72, "balanced_accuracy": 0.72, "confusion": [[20, 5], [9, 16]]}
    findings = diagnose(run("classification", best), metrics, CLS_MANIFEST)
    assert kinds(findings) == ["overfitting"] and "Since epoch 4" in findings[0]["message"]


def test_underfitting_when_the_training_score_stays_poor():
    metrics = history(train__epoch_loss=[0.9, 0.7, 0.6, 0.55], val__loss=[0.9, 0.72, 0.62, 0.58],
                      train__dice=[0.10, 0.20, 0.25, 0.28], val__dice=[0.10, 0.20, 0.24, 0.27],
                      val__pixel_accuracy=[0.90, 0.92, 0.93, 0.93])
    findings = diagnose(run(best={"dice": 0.27, "pixel_accuracy": 0.93}), metrics, SEG_MANIFEST)
    assert kinds(findings) == ["underfitting"] and "0.28" in findings[0]["message"]


def test_underfitting_when_the_training_loss_barely_falls():
    metrics = history(train__epoch_loss=[0.693, 0.690, 0.689, 0.688, 0.688],
                      val__loss=[0.694, 0.692, 0.690, 0.690, 0.689],
                      train__balanced_accuracy=[0.76, 0.77, 0.78, 0.78, 0.78],    # passable, but stuck
                      val__balanced_accuracy=[0.75, 0.76, 0.77, 0.77, 0.77])
    best = {"accuracy": 0.77, "balanced_accuracy": 0.77, "confusion": [[19, 6], [6, 19]]}
    findings = diagnose(run("classification", best), metrics, CLS_MANIFEST)
    assert kinds(findings) == ["underfitting"] and "barely fell" in findings[0]["message"]


# ---------------------------------------------------------------- diverging

def test_nan_loss_is_diverging_and_says_lower_the_learning_rate_tenfold():
    metrics = history(steps_per_epoch=3, train__epoch_loss=[0.7, 0.5], val__loss=[0.7, 0.55],
                      val__dice=[0.3, 0.4], val__pixel_accuracy=[0.9, 0.9])
    metrics.append({"epoch": 3, "step": 7, "split": "train", "name": "loss", "value": None})   # NaN is stored null
    findings = diagnose(run(config={"lr": 0.1, "monitor": "dice"}), metrics, SEG_MANIFEST)
    assert kinds(findings) == ["diverging"]
    assert "epoch 3" in findings[0]["message"] and "from 0.1 to 0.01" in findings[0]["message"]
    inf = history(train__epoch_loss=[0.7, math.inf])
    assert kinds(diagnose(run(), inf, SEG_MANIFEST)) == ["diverging"]


def test_a_run_stopped_for_nan_is_diverging_without_any_rows():
    stopped = run(status="failed", message="The loss became NaN/infinite at learning rate 0.5; lower the "
                                           "learning rate (e.g. 10× smaller) or switch to Adam.")
    assert kinds(diagnose(stopped, [], SEG_MANIFEST)) == ["diverging"]
    assert diagnose(run(status="failed", message="Out of memory with batch size 64"), [], SEG_MANIFEST) == []


def test_exploding_and_oscillating_losses_are_diverging():
    exploding = history(train__epoch_loss=[0.7, 0.5, 0.6, 1.1, 2.5], val__loss=[0.7, 0.5, 0.7, 1.2, 2.9])
    findings = diagnose(run(), exploding, SEG_MANIFEST)
    assert kinds(findings) == ["diverging"] and "grew from 0.5 (epoch 2) to 2.5" in findings[0]["message"]
    oscillating = history(train__epoch_loss=[0.7, 0.4, 0.65, 0.35, 0.6, 0.3, 0.62, 0.33])
    findings = diagnose(run(), oscillating, SEG_MANIFEST)
    assert kinds(findings) == ["diverging"] and "up and down" in findings[0]["message"]


# ---------------------------------------------------------------- how much the validation set can tell

def test_small_validation_set_gives_the_uncertainty():
    small = {**SEG_MANIFEST, "split_counts": {"train": 40, "val": 12, "test": 4}}
    findings = diagnose(run(best=HEALTHY_SEG_BEST), history(**HEALTHY_SEG), small)
    assert kinds(findings) == ["small_validation"]
    low, high = wilson_interval(0.84 * 12, 12)
    assert "12 validation images" in findings[0]["message"] and f"{low:.2f} to {high:.2f}" in findings[0]["message"]


def test_small_validation_uses_the_stored_interval_and_the_images_dice_averages_over():
    best = {**HEALTHY_SEG_BEST, "n": 40, "dice_n": 12, "dice_ci": [0.61, 0.93]}
    (finding,) = diagnose(run(best=best), history(**HEALTHY_SEG), SEG_MANIFEST)
    assert finding["kind"] == "small_validation" and "0.61 to 0.93" in finding["message"]
    assert "12 validation images that show the structure" in finding["message"]
    a, b = run(best={"dice": 0.80, "n": 400, "dice_n": 20}), run(best={"dice": 0.86, "n": 400, "dice_n": 20})
    assert compare_runs(a, b)["n"] == 20 and compare_runs(a, b)["within_noise"]


def test_few_validation_images_of_one_class():
    best = {**HEALTHY_CLS_BEST, "confusion": [[40, 4], [1, 2]]}          # 44 abdomen, only 3 chest
    findings = diagnose(run("classification", best), history(**HEALTHY_CLS), CLS_MANIFEST)
    assert kinds(findings) == ["small_validation"] and "3 of 'chest'" in findings[0]["message"]


def test_validation_count_from_the_run_or_the_manifest():
    assert validation_count(run("classification", {"confusion": [[3, 1], [2, 4]]}), CLS_MANIFEST) == \
        (10, {"abdomen": 4, "chest": 6})
    assert validation_count(run(best={"dice": 0.5, "n": 7}), SEG_MANIFEST) == (7, {})
    assert validation_count(run(best={"dice": 0.5}), SEG_MANIFEST) == (50, {})
    samples = [{"split": "val", "label": 0}] * 3 + [{"split": "val", "label": 1}] + [{"split": "train", "label": 1}]
    manifest = {**CLS_MANIFEST, "samples": samples, "split_counts": {"val": 4}}
    assert validation_count(run("classification"), manifest) == (4, {"abdomen": 3, "chest": 1})
    assert validation_count(run(), None) == (None, {})


def test_noise_margin_shrinks_with_more_images_and_never_vanishes():
    assert noise_margin(0.8, 0.8, 400) < noise_margin(0.8, 0.8, 100) < noise_margin(0.8, 0.8, 25)
    assert noise_margin(1.0, 1.0, 30) > 0.02         # two perfect scores on 30 images still could be chance


def test_compare_runs_within_and_beyond_noise():
    a = run("classification", {"accuracy": 0.80}, id="a")
    b = run("classification", {"accuracy": 0.85}, id="b")
    close = compare_runs(a, b, n=26)
    assert close["within_noise"] and "cannot tell them apart" in close["message"]
    assert close["difference"] == pytest.approx(-0.05) and close["margin"] > 0.05
    # Both scores inside each other's 95 % Wilson interval, as the rule promises for such a pair.
    low, high = wilson_interval(0.80 * 26, 26)
    assert low < 0.85 < high
    far = compare_runs(run("classification", {"accuracy": 0.6}, id="a"),
                       run("classification", {"accuracy": 0.95}, id="b"), n=100)
    assert not far["within_noise"] and far["message"].startswith("Run b is better")
    assert compare_runs(a, {**b, "dataset_id": "other"}, n=26) is None          # different validation images
    assert compare_runs(a, b, metric="loss", n=26) is None                      # not a score in [0, 1]
    assert compare_runs(a, b) is None                                           # how many images is unknown
    with_confusion = run("classification", {"accuracy": 0.8, "confusion": [[10, 3], [2, 11]]})
    assert compare_runs(with_confusion, b)["n"] == 26


def test_a_search_best_within_noise_of_the_default():
    finding = within_noise_of_default(0.86, 0.84, "dice", 26)
    assert finding["kind"] == "within_noise" and "default settings" in finding["message"]
    assert within_noise_of_default(0.95, 0.60, "dice", 100) is None
    assert within_noise_of_default(0.86, 0.84, "hd95", 26) is None


# ---------------------------------------------------------------- the CLI's rows carry it

def test_run_rows_carry_the_diagnosis_from_the_store(lightbox_env):
    from engine.cli.common import run_summaries, run_summary
    from engine.runs import store
    healthy = store.insert_run({"dataset_id": "gone", "arch": "unet", "task": "segmentation"}, status="running")
    paradox = store.insert_run({"dataset_id": "gone", "arch": "mlp", "task": "segmentation"}, status="running")
    store.log_metrics(healthy, [(r["epoch"], r["step"], r["split"], r["name"], r["value"])
                                for r in history(steps_per_epoch=4, **HEALTHY_SEG)])
    store.update_run(healthy, best=HEALTHY_SEG_BEST, best_metric="dice")
    store.log_metrics(paradox, [(1, 1, "train", "loss", 0.3), (1, 2, "train", "loss", float("nan")),
                                (1, 2, "val", "dice", 0.0), (1, 2, "val", "pixel_accuracy", 0.98)])
    rows = {row["run_id"]: row for row in run_summaries(store.list_runs())}
    assert rows[healthy]["diagnosis"] == []
    assert kinds(rows[paradox]["diagnosis"]) == ["diverging"]        # the NaN step reached the history
    assert run_summary(store.get_run(paradox))["diagnosis"] == rows[paradox]["diagnosis"]


def test_a_real_run_whose_loss_turns_nan_is_diagnosed_as_diverging(tiny_segmentation):
    """Ties the rule to what the trainer really stores when it stops on a NaN loss."""
    from engine.cli.common import run_summary
    from engine.config import RunConfig
    from engine.runs import execute
    from engine.runs.submit import create_run
    from engine.training.events import Event

    class Poison:
        def attach(self, events):
            events.on(Event.FIT_START, self.poison)

        def poison(self, trainer):
            real = trainer.loss_fn
            trainer.loss_fn = lambda logits, target: real(logits, target) * float("nan")

    config = RunConfig(dataset_id=tiny_segmentation, arch="mlp", epochs=1, batch_size=8, image_size=32, lr=0.05)
    run = execute.run_job(create_run(config, status="running"), handlers=[Poison()])
    assert run["status"] == "failed"
    (finding,) = run_summary(run)["diagnosis"]
    assert finding["kind"] == "diverging" and "from 0.05 to 0.005" in finding["message"]
