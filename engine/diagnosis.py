"""What went wrong with a run, in plain words: rules over its stored row and metric history, no torch.

API (plain dicts in and out, so the CLI, the Monitor and the Compare page share it):

    diagnose(run, metrics, manifest=None) -> [{"kind", "message"}, ...]   # [] when nothing looks wrong
        run       a store row (engine.runs.store.get_run / list_runs): task, status, message, config, best
        metrics   its metric rows (store.get_metrics(run_id), or store.epoch_metrics_many(ids)[run_id]):
                  dicts with epoch, split, name, value; per-step loss rows are optional
        manifest  the dataset's manifest (engine.data.manifest.load_manifest), optional: class names and the
                  number of validation images when the run row does not carry them
        kinds, most urgent first: diverging, predicts_background | majority_class, underfitting, overfitting,
        small_validation. Each message says what is wrong and the next thing to try, in one sentence.

    validation_count(run, manifest=None) -> (n or None, {class name: n})
    scored_images(run, metric, n) -> the images a metric averages over (Dice: those holding the structure)
    compare_runs(a, b, metric=None, n=None, manifest=None) -> dict | None   # None: cannot be compared
        {"metric", "a", "b", "difference", "margin", "n", "within_noise", "message"}
    within_noise_of_default(best, default, metric, n) -> {"kind": "within_noise", "message"} | None
        for a search: its best trial's score against a default-settings run's, on the same n validation images

The 95 % interval of one score is engine.intervals.wilson_interval(p * n, n).

Noise model: a score in [0, 1] averaged over n images (accuracy, Dice, ...) varies by chance at most as much
as a proportion does (a per-image value in [0, 1] with mean p has variance ≤ p(1 − p)). Two runs scored on the
same images are compared as if independent, which overstates the noise: "within noise" means the validation
set cannot tell them apart, not that they are equal.
"""
from __future__ import annotations

import math
from itertools import pairwise
from typing import Any

from engine.intervals import wilson_interval
from engine.tasks import (
    LOWER_IS_BETTER,
    METRIC_TITLES,
    SMALL_SPLIT_IMAGES,
    SMALL_SPLIT_PER_CLASS,
    UNIT_METRICS,
)

Finding = dict[str, str]

# ---------------------------------------------------------------- thresholds (each with why)

# The accuracy paradox: a foreground Dice this small means the structure is essentially never found...
BACKGROUND_DICE = 0.05
# ...while this pixel accuracy shows the background alone (most of every image) is being labelled right.
HIGH_PIXEL_ACCURACY = 0.8
# One predicted class holding this share of validation answers is "always the same answer" (a few stray
# predictions on other classes do not make a classifier).
MAJORITY_SHARE = 0.95
# Balanced accuracy within this of 1/K (chance for K classes) means nothing was learnt beyond guessing.
CHANCE_MARGIN = 0.05
# Overfitting: validation loss stayed this far above its lowest value for OVERFIT_EPOCHS epochs and ended
# OVERFIT_RISE above it (10 % is beyond epoch-to-epoch wobble of a settled run), while training loss fell.
OVERFIT_EPOCHS = 3
OVERFIT_STAY = 0.05
OVERFIT_RISE = 0.10
# ...or the training score ends this far above the validation score (Dice or balanced accuracy, 0-1 scale),
# having grown by OVERFIT_GAP_GROWTH since the first epoch: a gap a model did not start with.
OVERFIT_GAP = 0.20
OVERFIT_GAP_GROWTH = 0.10
# Underfitting: a training score below these after training is poor on the very images the model saw
# (Dice: under half of the structure overlaps; classification: not even halfway from chance to perfect).
POOR_TRAIN_DICE = 0.5
POOR_TRAIN_SHARE_ABOVE_CHANCE = 0.5
# ...or, over at least UNDERFIT_EPOCHS epochs, training loss fell by less than 5 % from the first epoch
# while the training score is below GOOD_TRAIN_SCORE (a model that already fits well may plateau).
UNDERFIT_EPOCHS = 3
UNDERFIT_MIN_DROP = 0.05
GOOD_TRAIN_SCORE = 0.9
# A poor training score is only judged once the run stopped or had UNDERFIT_EPOCHS epochs: every run starts poor.
STILL_TRAINING = ("queued", "starting", "running")
# Diverging: the training loss ends above its first epoch and at least this many times its lowest value...
EXPLODE_RATIO = 2.0
# ...or it jumps up by at least this share of the first epoch's loss (its scale) in OSCILLATION_JUMPS epochs.
OSCILLATION_RISE = 0.25
OSCILLATION_JUMPS = 3
# The trainer stops a run whose loss became NaN/inf with this phrase in its message (Trainer._nan_message);
# the non-finite step losses of that last epoch may not reach the store before it stops.
NAN_STOP_PHRASE = "NaN/infinite"
# Two scores differ beyond chance when their difference exceeds 1.96 standard errors (95 %).
Z95 = 1.96


# ---------------------------------------------------------------- the diagnosis

def diagnose(run: dict, metrics: list[dict], manifest: dict | None = None) -> list[Finding]:
    """Findings about one run, most urgent first; [] for a healthy run or one that has not finished an epoch."""
    history = History(metrics)
    diverging = _diverging(run, history)
    if diverging:
        return [diverging]          # with a broken loss every other number is meaningless
    if not history.epochs and not run.get("best"):
        return []
    task = run.get("task") or (run.get("config") or {}).get("task")
    answers_one_class = _predicts_background if task == "segmentation" else _majority_class
    rules = (answers_one_class, _underfitting, _overfitting)
    findings = [f for rule in rules if (f := rule(run, history, manifest, task))]
    small = _small_validation(run, manifest)
    return findings + ([small] if small else [])


class History:
    """Epoch-indexed views of a run's metric rows."""

    def __init__(self, metrics: list[dict]) -> None:
        self.rows = metrics
        self.series: dict[tuple[str, str], dict[int, float | None]] = {}
        for row in metrics:
            if row.get("split") == "train" and row.get("name") == "loss":
                continue                                   # per-step rows: only checked for NaN
            self.series.setdefault((row["split"], row["name"]), {})[int(row["epoch"])] = row.get("value")
        self.epochs = sorted({e for (split, _), s in self.series.items() if split == "val" for e in s})

    def values(self, split: str, name: str) -> list[tuple[int, float]]:
        """(epoch, value) in epoch order, finite values only."""
        series = self.series.get((split, name), {})
        return [(e, v) for e, v in sorted(series.items()) if _finite(v)]

    def last(self, split: str, name: str) -> float | None:
        values = self.values(split, name)
        return values[-1][1] if values else None

    def first_non_finite_loss(self) -> int | None:
        """The first epoch with a NaN (stored as null) or infinite loss, per step or per epoch."""
        losses = [r for r in self.rows if (r.get("split"), r.get("name")) in
                  (("train", "loss"), ("train", "epoch_loss"), ("val", "loss"))]
        bad = [int(r["epoch"]) for r in losses if not _finite(r.get("value"))]
        return min(bad) if bad else None


def _diverging(run: dict, history: History) -> Finding | None:
    lr = (run.get("config") or {}).get("lr")
    advice = (f"lower the learning rate ten times (from {lr:g} to {lr / 10:g})" if isinstance(lr, (int, float))
              and lr > 0 else "lower the learning rate ten times")
    epoch = history.first_non_finite_loss()
    stopped = run.get("status") == "failed" and NAN_STOP_PHRASE in (run.get("message") or "")
    if epoch is not None or stopped:
        where = f" in epoch {epoch}" if epoch is not None else ""
        return _finding("diverging", f"The loss became NaN or infinite{where}, which means the training steps "
                                     f"are far too large: {advice} and train again.")
    losses = history.values("train", "epoch_loss")
    if len(losses) < 3:
        return None
    values = [v for _, v in losses]
    low_at = min(range(len(values)), key=values.__getitem__)
    if values[-1] > values[0] and values[-1] >= EXPLODE_RATIO * values[low_at] and low_at < len(values) - 1:
        return _finding("diverging", f"The training loss grew from {values[low_at]:.3g} (epoch "
                                     f"{losses[low_at][0]}) to {values[-1]:.3g} (epoch {losses[-1][0]}) instead "
                                     f"of falling, so the steps overshoot: {advice}.")
    jumps = sum(1 for a, b in pairwise(values) if b - a >= OSCILLATION_RISE * values[0])
    if jumps >= OSCILLATION_JUMPS:
        return _finding("diverging", f"The training loss jumps up and down (it rose sharply in {jumps} of "
                                     f"{len(values) - 1} epochs) instead of falling steadily, so the steps "
                                     f"overshoot: {advice}.")
    return None


def _scores(run: dict, history: History, names: tuple[str, ...]) -> dict[str, float]:
    """Validation scores at the best epoch, else at the last epoch logged."""
    best = run.get("best") or {}
    source = best if any(_finite(best.get(n)) for n in names) else \
        {n: history.last("val", n) for n in names}
    return {n: float(source[n]) for n in names if _finite(source.get(n))}


def _predicts_background(run: dict, history: History, manifest: dict | None, task: str) -> Finding | None:
    scores = _scores(run, history, ("dice", "pixel_accuracy"))
    dice, accuracy = scores.get("dice"), scores.get("pixel_accuracy")
    if dice is None or accuracy is None or dice > BACKGROUND_DICE or accuracy < HIGH_PIXEL_ACCURACY:
        return None
    return _finding("predicts_background",
                    f"Pixel accuracy is {accuracy:.0%} but the Dice score is only {dice:.2f}: the model marks "
                    "(almost) every pixel as background, which is right for most pixels yet finds nothing (the "
                    "accuracy paradox), so judge it by Dice and try a convolutional network such as U-Net with a "
                    "Dice or CE + Dice loss.")


def _majority_class(run: dict, history: History, manifest: dict | None, task: str) -> Finding | None:
    best = run.get("best") or {}
    confusion = best.get("confusion")
    k = len(confusion) if confusion else (manifest or {}).get("num_classes")
    balanced = _scores(run, history, ("balanced_accuracy",)).get("balanced_accuracy")
    advice = "turn on 'Weight classes by rarity', train longer or start from ImageNet weights"
    if confusion and sum(map(sum, confusion)):
        columns = [sum(row[j] for row in confusion) for j in range(len(confusion))]
        top = max(range(len(columns)), key=columns.__getitem__)
        share = columns[top] / sum(columns)
        classes_present = sum(1 for row in confusion if sum(row))
        if share >= MAJORITY_SHARE and classes_present > 1:
            name = _class_name(top, manifest)
            return _finding("majority_class",
                            f"The model answers {name} for {share:.0%} of the validation images, so its accuracy "
                            f"only shows how common {name} is and it has not learnt to tell the classes apart: "
                            f"{advice}.")
    if balanced is not None and k and balanced <= 1 / k + CHANCE_MARGIN:
        return _finding("majority_class",
                        f"Balanced accuracy is {balanced:.2f}, no better than guessing among {k} classes "
                        f"({1 / k:.2f}), so the model has not learnt to tell the classes apart: {advice}.")
    return None


def _train_score(history: History, task: str) -> tuple[str, float | None]:
    name = "dice" if task == "segmentation" else "balanced_accuracy"
    return name, history.last("train", name)


def _poor_score(task: str, value: float, run: dict, manifest: dict | None) -> bool:
    if task == "segmentation":
        return value < POOR_TRAIN_DICE
    k = len((run.get("best") or {}).get("confusion") or []) or (manifest or {}).get("num_classes") or 2
    chance = 1 / k
    return value < chance + POOR_TRAIN_SHARE_ABOVE_CHANCE * (1 - chance)


def _underfitting(run: dict, history: History, manifest: dict | None, task: str) -> Finding | None:
    name, score = _train_score(history, task)
    losses = [v for _, v in history.values("train", "epoch_loss")]
    title = METRIC_TITLES.get(name, name)
    advice = ("train for more epochs" if len(losses) < UNDERFIT_EPOCHS
              else "train longer, raise the learning rate a little or pick a larger model")
    settled = run.get("status") not in STILL_TRAINING or len(losses) >= UNDERFIT_EPOCHS
    if score is not None and settled and _poor_score(task, score, run, manifest):
        return _finding("underfitting",
                        f"Even on its own training images the model reaches only {title} {score:.2f}, so it has "
                        f"not learnt the task yet (underfitting): {advice}.")
    flat = (len(losses) >= UNDERFIT_EPOCHS and min(losses[1:]) >= (1 - UNDERFIT_MIN_DROP) * losses[0]
            and (score is None or score < GOOD_TRAIN_SCORE))
    if flat:
        return _finding("underfitting",
                        f"The training loss barely fell in {len(losses)} epochs ({losses[0]:.3g} → "
                        f"{losses[-1]:.3g}), so the model is not learning (underfitting): raise the learning "
                        "rate, train longer or pick a larger model.")
    return None


def _overfitting(run: dict, history: History, manifest: dict | None, task: str) -> Finding | None:
    return _overfitting_by_loss(history) or _overfitting_by_gap(history, task)


def _overfitting_by_loss(history: History) -> Finding | None:
    val = history.values("val", "loss")
    train = dict(history.values("train", "epoch_loss"))
    if len(val) <= OVERFIT_EPOCHS:
        return None
    low_epoch, low = min(val, key=lambda ev: ev[1])
    after = [v for e, v in val if e > low_epoch]
    last_epoch, last = val[-1]
    rising = (len(after) >= OVERFIT_EPOCHS and all(v >= low * (1 + OVERFIT_STAY) for v in after[-OVERFIT_EPOCHS:])
              and last >= low * (1 + OVERFIT_RISE))
    train_fell = low_epoch in train and last_epoch in train and train[last_epoch] < train[low_epoch]
    if not (rising and train_fell):
        return None
    return _finding("overfitting",
                    f"Since epoch {low_epoch} the validation loss has risen ({low:.3g} → {last:.3g}) while the "
                    "training loss kept falling, so the model is memorising its training images (overfitting): "
                    f"use the best epoch ({low_epoch} or near it), and add augmentation, weight decay or early "
                    "stopping; more training images help most.")


def _overfitting_by_gap(history: History, task: str) -> Finding | None:
    name = "dice" if task == "segmentation" else "balanced_accuracy"
    train, val = dict(history.values("train", name)), dict(history.values("val", name))
    epochs = [e for e in history.epochs if e in train and e in val]
    if len(epochs) < 2:
        return None
    gaps = [(e, train[e] - val[e]) for e in epochs]
    if gaps[-1][1] < OVERFIT_GAP or gaps[-1][1] - gaps[0][1] < OVERFIT_GAP_GROWTH:
        return None
    since = gaps[-1][0]
    for e, gap in reversed(gaps):
        if gap < OVERFIT_GAP:
            break
        since = e
    title = METRIC_TITLES.get(name, name)
    return _finding("overfitting",
                    f"Since epoch {since} the training {title} ({train[gaps[-1][0]]:.2f}) has been far above the "
                    f"validation {title} ({val[gaps[-1][0]]:.2f}), so the model is memorising its training images "
                    "(overfitting): add augmentation or weight decay, or use a smaller or pretrained model; more "
                    "training images help most.")


def _small_validation(run: dict, manifest: dict | None) -> Finding | None:
    n, per_class = validation_count(run, manifest)
    if n is None:
        return None
    if n == 0:
        return _finding("small_validation", "There are no validation images, so no score can be trusted: "
                                            f"add validation images ({SMALL_SPLIT_IMAGES} or more).")
    metric = run.get("best_metric") or (run.get("config") or {}).get("monitor")
    scored = scored_images(run, metric, n)            # Dice: only the images that show the structure count
    few = {name: count for name, count in per_class.items() if count < SMALL_SPLIT_PER_CLASS}
    if scored >= SMALL_SPLIT_IMAGES and not few:
        return None
    value = (run.get("best") or {}).get(metric)
    interval = _interval(run, metric, n)
    if _finite(value) and interval:
        what = (f"the validation {METRIC_TITLES.get(metric, metric)} of {value:.2f} could as well be anywhere "
                f"from {interval[0]:.2f} to {interval[1]:.2f}")
    else:
        what = "the validation scores could move a lot by chance"
    if scored < SMALL_SPLIT_IMAGES:
        images = "validation images" + (" that show the structure" if scored != n else "")
        head = f"With only {scored} {images} {what}"
    else:
        counts = [f"{count} of '{name}'" for name, count in few.items()]
        head = f"With only {counts[0]}{''.join(', ' + c for c in counts[1:])} among the validation images {what}"
    return _finding("small_validation",
                    f"{head}, so small differences between runs mean little: add validation images "
                    f"({SMALL_SPLIT_IMAGES} or more, at least {SMALL_SPLIT_PER_CLASS} per class) or use cross-validation.")


# ---------------------------------------------------------------- counting and noise

def validation_count(run: dict, manifest: dict | None = None) -> tuple[int | None, dict[str, int]]:
    """(validation images, {class name: images} for classification): from the run's best epoch when it says
    (its "n", or the confusion matrix's rows), else from the dataset's manifest; (None, {}) when unknown."""
    best = run.get("best") or {}
    confusion = best.get("confusion")
    per_class: dict[str, int] = {}
    if confusion:
        per_class = {_class_name(i, manifest, quoted=False): int(sum(row)) for i, row in enumerate(confusion)}
    elif manifest and manifest.get("task") == "classification":
        labels = [s.get("label") for s in manifest.get("samples", ()) if s.get("split") == "val"]
        per_class = {_class_name(i, manifest, quoted=False): labels.count(i)
                     for i in range(manifest.get("num_classes") or 0)}
    n = best.get("n")
    if not isinstance(n, int):
        n = sum(per_class.values()) if confusion else ((manifest or {}).get("split_counts") or {}).get("val")
    return (int(n) if isinstance(n, int) else None), per_class


def scored_images(run: dict, metric: str, n: int | None) -> int | None:
    """How many validation images a metric averages over: Dice and IoU only count the images that hold the
    structure ("dice_n") when the run says so; every other metric all n."""
    dice_n = (run.get("best") or {}).get("dice_n")
    return dice_n if metric in ("dice", "iou") and isinstance(dice_n, int) else n


def _interval(run: dict, metric: str, n: int) -> tuple[float, float] | None:
    """The best epoch's 95 % interval of a metric: as the trainer stored it ("<metric>_ci"), else Wilson's."""
    best = run.get("best") or {}
    stored = best.get(f"{metric}_ci")
    if isinstance(stored, (list, tuple)) and len(stored) == 2 and all(map(_finite, stored)):
        return float(stored[0]), float(stored[1])
    value, images = best.get(metric), scored_images(run, metric, n)
    if metric not in UNIT_METRICS or not _finite(value) or not images:
        return None
    low, high = wilson_interval(float(value) * images, images)
    return low, high


def noise_margin(a: float, b: float, n: int, z: float = Z95) -> float:
    """The largest difference between two scores on n images that chance alone explains (95 %), by the
    Agresti–Caffo interval for a difference of proportions (sound even at 0 or 1)."""
    if n <= 0:
        return 1.0
    pa, pb = (a * n + 1) / (n + 2), (b * n + 1) / (n + 2)
    return z * math.sqrt((pa * (1 - pa) + pb * (1 - pb)) / (n + 2))


# A score whose chance variation a proportion bounds: in [0, 1] and averaged over images. ROC AUC is not (it
# ranks pairs of images, and its noise depends on the rarer class).
NOISE_METRICS = UNIT_METRICS - {"auc"}


def compare_runs(a: dict, b: dict, metric: str | None = None, n: int | None = None,
                 manifest: dict | None = None) -> dict[str, Any] | None:
    """Whether two runs' validation scores differ by more than their validation set can tell.

    None when they cannot be compared this way: other datasets, a metric outside NOISE_METRICS or missing,
    or an unknown number of validation images (pass n, or the manifest)."""
    metric = metric or a.get("best_metric") or (a.get("config") or {}).get("monitor")
    if a.get("dataset_id") != b.get("dataset_id") or metric not in NOISE_METRICS or metric in LOWER_IS_BETTER:
        return None
    va, vb = (a.get("best") or {}).get(metric), (b.get("best") or {}).get(metric)
    n = n if n is not None else scored_images(a, metric, validation_count(a, manifest)[0])
    if not (_finite(va) and _finite(vb)) or not n:
        return None
    va, vb = float(va), float(vb)
    margin = noise_margin(va, vb, n)
    within = abs(va - vb) < margin
    title = METRIC_TITLES.get(metric, metric)
    if within:
        message = (f"The two runs' {title} ({va:.3f} and {vb:.3f}) differ by {abs(va - vb):.3f}, less than the "
                   f"±{margin:.3f} that chance alone gives on {n} validation images, so this validation set cannot "
                   "tell them apart: prefer the simpler or faster one, or add validation images.")
    else:
        better = (a if va > vb else b).get("id")
        message = (f"{f'Run {better}' if better else 'One run'} is better by {abs(va - vb):.3f} in {title}, more "
                   f"than the ±{margin:.3f} that chance gives on {n} validation images.")
    return {"metric": metric, "a": va, "b": vb, "difference": va - vb, "margin": margin, "n": n,
            "within_noise": within, "message": message}


def within_noise_of_default(best: float, default: float, metric: str, n: int) -> Finding | None:
    """For a search: a finding when its best trial does not beat the default settings' score by more than
    chance on n validation images; None when it clearly does (or clearly does not, or n is unknown)."""
    if metric not in NOISE_METRICS or not n or not (_finite(best) and _finite(default)):
        return None
    margin = noise_margin(best, default, n)
    if abs(best - default) >= margin:
        return None
    title = METRIC_TITLES.get(metric, metric)
    return _finding("within_noise",
                    f"The search's best {title} ({best:.3f}) is within chance (±{margin:.3f} on {n} validation "
                    f"images) of the default settings' {default:.3f}, so the search has not shown a real gain: "
                    "keep the default settings, or add validation images before searching further.")


# ---------------------------------------------------------------- small helpers

def _finding(kind: str, message: str) -> Finding:
    return {"kind": kind, "message": message}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _class_name(index: int, manifest: dict | None, quoted: bool = True) -> str:
    classes = (manifest or {}).get("classes") or []
    name = str(classes[index]) if index < len(classes) else f"class {index}"
    return f"'{name}'" if quoted else name
