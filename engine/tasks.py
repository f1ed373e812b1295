"""The two tasks Lightbox knows, and what each is scored by. Plain data: imports nothing."""
from __future__ import annotations

TASKS = ("classification", "segmentation")

METRIC_TITLES = {"dice": "Dice", "iou": "IoU", "pixel_accuracy": "Pixel accuracy", "hd95": "95% Hausdorff",
                 "accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy", "auc": "ROC AUC",
                 "f1_macro": "F1 (macro)", "loss": "Loss"}
# Validation metrics computed every epoch, per task; the first is the default for picking the best epoch.
TASK_METRICS = {"segmentation": ("dice", "iou", "pixel_accuracy"),
                "classification": ("accuracy", "balanced_accuracy", "auc", "f1_macro")}
UNIT_METRICS = {"dice", "iou", "pixel_accuracy", "accuracy", "balanced_accuracy", "auc", "f1_macro"}   # in [0, 1]
LOWER_IS_BETTER = {"loss", "hd95"}


def default_loss(task: str) -> str:
    return "ce_dice" if task == "segmentation" else "ce"


def default_monitor(task: str) -> str:
    return TASK_METRICS[task][0] if task in TASK_METRICS else ""


def monitor_choices(task: str) -> list[str]:
    return [*TASK_METRICS.get(task, ()), "loss"]
