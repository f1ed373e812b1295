"""The two tasks Lightbox knows, and what each is scored by. Plain data: imports nothing."""
from __future__ import annotations

TASKS = ("classification", "segmentation")

METRIC_TITLES = {"dice": "Dice", "iou": "IoU", "pixel_accuracy": "Pixel accuracy", "hd95": "95% Hausdorff",
                 "accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy", "auc": "ROC AUC",
                 "f1_macro": "F1 (macro)", "loss": "Loss",
                 "n": "Images scored", "dice_n": "Images with the structure", "empty_correct": "Empty images left empty",
                 "empty_total": "Empty images", "hd95_empty": "HD95 penalties (one mask empty)",
                 "hd95_penalty": "HD95 penalty (image diagonal)"}
# Validation metrics computed every epoch, per task; the first is the default for picking the best epoch.
TASK_METRICS = {"segmentation": ("dice", "iou", "pixel_accuracy"),
                "classification": ("accuracy", "balanced_accuracy", "auc", "f1_macro")}
UNIT_METRICS = {"dice", "iou", "pixel_accuracy", "accuracy", "balanced_accuracy", "auc", "f1_macro"}   # in [0, 1]
LOWER_IS_BETTER = {"loss", "hd95"}
# The scores to lead with (shown with n and 95 % intervals); pixel accuracy is computed but never one of them.
HEADLINE_METRICS = {"segmentation": ("dice", "iou", "hd95"),
                    "classification": ("accuracy", "balanced_accuracy", "auc", "f1_macro")}
IMBALANCE_RATIO = 1.5       # largest to smallest class above this: lead with balanced accuracy, and warn at ingest
# A validation or test split below these gives scores too shaky to trust (warned at ingest, on the Train page and
# in a run's diagnosis): below 30 images a proportion's 95 % interval is wider than ±15 points at 70-80 %, and one
# image moves accuracy by > 3 points; below 5 images of a class, its recall can only take a handful of values.
SMALL_SPLIT_IMAGES = 30
SMALL_SPLIT_PER_CLASS = 5
METRIC_NOTES = {
    "pixel_accuracy": "Pixel accuracy is not a headline score: when the structure covers 2 % of the image, a model "
                      "that predicts only background is 98 % right while finding nothing (the accuracy paradox).",
    "dice": "Dice is averaged over the images that contain the structure; images with nothing to find are "
            "counted separately as empty slices correctly left empty.",
    "hd95": "An image where exactly one of prediction and truth is empty gets the image diagonal as its 95% "
            "Hausdorff distance (the penalty), so missed or invented structures are never skipped.",
    "balanced_accuracy": "Balanced accuracy averages the recall of each class, so a model that always answers "
                         "the majority class scores 1/K however common that class is.",
    "auc_vs_accuracy": "ROC AUC and accuracy disagree: AUC asks whether the scores rank positives above "
                       "negatives at any cut-off, accuracy judges the one cut-off used; a high AUC with low "
                       "(balanced) accuracy means the ranking is good but the cut-off is off (often from class "
                       "imbalance), while high accuracy with AUC near 0.5 means the accuracy comes from "
                       "answering the common class.",
}
AUC_DISAGREEMENT = 0.15     # |AUC − accuracy| or |AUC − balanced accuracy| at or above this gets the note


def default_loss(task: str) -> str:
    return "ce_dice" if task == "segmentation" else "ce"


def default_monitor(task: str) -> str:
    return TASK_METRICS[task][0] if task in TASK_METRICS else ""


def monitor_choices(task: str) -> list[str]:
    return [*TASK_METRICS.get(task, ()), "loss"]


def headline_metric(task: str, class_counts) -> str:
    """The score to lead with: Dice for segmentation; balanced accuracy when classes are imbalanced (largest to
    smallest above 1.5 : 1, classes with no images ignored), else accuracy. `class_counts`: dict or sequence."""
    if task == "segmentation":
        return "dice"
    counts = [c for c in (class_counts.values() if isinstance(class_counts, dict) else class_counts) if c > 0]
    if counts and max(counts) > IMBALANCE_RATIO * min(counts):
        return "balanced_accuracy"
    return "accuracy"


def auc_accuracy_note(metrics: dict) -> str | None:
    """METRIC_NOTES["auc_vs_accuracy"] when a classification result's AUC is AUC_DISAGREEMENT or more away from
    its accuracy or its balanced accuracy; else None (also when AUC is missing or nan)."""
    auc = metrics.get("auc")
    if not _number(auc):
        return None
    others = [metrics.get(k) for k in ("accuracy", "balanced_accuracy")]
    gaps = [abs(auc - v) for v in others if _number(v)]
    return METRIC_NOTES["auc_vs_accuracy"] if gaps and max(gaps) >= AUC_DISAGREEMENT else None


def _number(value) -> bool:
    return isinstance(value, (int, float)) and value == value
