"""What a search's best trial must beat before 'Train with the best parameters' is worth offering.

The bar is a finished run trained with the default settings on the same dataset, when there is one (the best
of them). Without one it is the best constant guess: the validation score of a "model" that gives every image
(classification) or every pixel (segmentation) one and the same class, measured by the trainer's own metric
meters at the search's image size, so it follows their conventions (how images without the structure count).
That is the commonest class's share for accuracy, 1/classes for balanced accuracy, 0.5 for ROC AUC, and for
Dice the better of marking every pixel as background or as the structure. A best score of 0 never qualifies.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from engine import workspace
from engine.accounts import access
from engine.accounts.actor import Actor
from engine.config import RunConfig
from engine.data.dataset import load_split
from engine.data.manifest import load_manifest
from engine.diagnosis import within_noise_of_default
from engine.errors import UserError
from engine.metrics import ClassificationMeter, SegmentationMeter
from engine.models.registry import DEFAULT_ARCH, get_spec, resolve_options
from engine.runs import store
from engine.search import study as search
from engine.tasks import METRIC_TITLES

# Settings that say how a run is labelled or where it runs, not what it learns.
NOT_LEARNING = {"dataset_id", "task", "name", "seed", "device", "amp", "preview_samples", "monitor"}


def is_default_run(config: dict[str, Any], task: str) -> bool:
    """Whether a run used the plain default settings: RunConfig's defaults with the task's default
    architecture and loss; its image size RunConfig's or the architecture's own (the Train page starts there),
    its architecture options at their defaults (given or not)."""
    arch = get_spec(DEFAULT_ARCH[task], task)
    for key, value in RunConfig(task=task, arch=arch.name).to_dict().items():
        if key in NOT_LEARNING:
            continue
        given = config.get(key, value)
        if key == "model_options":
            try:
                same = resolve_options(arch, given) == arch.default_options()
            except UserError:
                same = False
        elif key == "image_size":
            same = given in (value, arch.default_size)
        else:
            same = given == value
        if not same:
            return False
    return True


def default_run(dataset_id: str, task: str, objective: str,
                actor: Actor | None = None) -> tuple[str, float] | None:
    """(run id, score) of the best finished default-settings run on this dataset that is not a search trial and
    that the actor may see (a student: one of their own runs, never another student's)."""
    found = None
    for run in access.visible_runs(actor, store.list_runs(status=["done"])):
        if run["dataset_id"] != dataset_id or run.get("study"):
            continue
        value = (run.get("best") or {}).get(objective)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        if (found is None or value > found[1]) and is_default_run(run["config"], task):
            found = (run["id"], float(value))
    return found


def constant_guess(dataset_id: str, objective: str, image_size: int) -> tuple[float, str] | None:
    """(score, class) of the best one-class-for-everything answer on the validation split; None without one."""
    return _constant_guess(str(workspace.home()), dataset_id, objective, image_size)


@lru_cache(maxsize=32)
def _constant_guess(home: str, dataset_id: str, objective: str, image_size: int) -> tuple[float, str] | None:
    manifest = load_manifest(dataset_id)        # `home` only keys the cache: datasets never change once ingested
    targets = torch.from_numpy(np.asarray(load_split(dataset_id, "val", image_size).targets, dtype=np.int64))
    if len(targets) == 0:
        return None
    k, segmentation = manifest["num_classes"], manifest["task"] == "segmentation"
    best = None
    for label in range(k):
        if segmentation:
            meter = SegmentationMeter(k)
            meter.update(torch.full_like(targets, label), targets)
        else:
            meter = ClassificationMeter(k)
            meter.update(torch.nn.functional.one_hot(torch.full_like(targets, label), k).float(), targets)
        score = meter.compute().get(objective)
        if score is not None and math.isfinite(score) and (best is None or score > best[0]):
            best = (float(score), manifest["classes"][label])
    return best


def verdict(name: str, info: dict[str, Any] | None = None, actor: Actor | None = None) -> dict[str, Any]:
    """Whether to offer training with the study's best settings, and why, in one or two plain sentences:
    {"offer", "reason", "bar", "bar_run_id"}. `info` is the study's summary when the caller already has it."""
    info = info or search.summary(name, actor=actor)
    spec = search.load_spec(name)
    metric = METRIC_TITLES.get(spec.objective, spec.objective)
    best = info["best_value"]
    out: dict[str, Any] = {"offer": False, "bar": None, "bar_run_id": None}
    if best is None:
        return out | {"reason": "No trial has finished yet."}
    if best <= 0:
        return out | {"reason": f"Not offered: the best trial scored {metric} {best:.3f}, so none of the settings "
                                "tried has learned anything yet. Try more epochs per trial or another "
                                "learning-rate range."}
    try:
        task = load_manifest(spec.dataset_id)["task"]
    except UserError:
        return out | {"reason": "Not offered: the dataset of this search was deleted, so there is nothing to "
                                "train on. Start a new search on another dataset."}
    run = default_run(spec.dataset_id, task, spec.objective, actor)
    if run is not None:
        run_id, bar = run
        out.update(bar=bar, bar_run_id=run_id, offer=best > bar)
        if out["offer"]:
            reason = (f"The best trial's {metric} ({best:.3f}) beats run {run_id}, trained with the default "
                      f"settings on this dataset ({bar:.3f}).")
            noise = within_noise_of_default(best, bar, spec.objective, _scored_images(run_id, spec.objective))
            if noise:                        # higher, but not by more than the validation set can tell
                return out | {"within_noise": True, "reason": f"{reason} {noise['message']}"}
            return out | {"reason": reason}
        return out | {"reason": f"Not offered: the best trial's {metric} ({best:.3f}) does not beat run {run_id}, "
                                f"trained with the default settings on this dataset ({bar:.3f}), so training "
                                "with the search's settings would not help. Keep that run, or search with more "
                                "epochs per trial or other settings."}
    try:
        guess = constant_guess(spec.dataset_id, spec.objective, int(spec.base.get("image_size", 128)))
    except (OSError, ValueError):           # unreadable arrays: the 0 bar above still holds
        guess = None
    if guess is None:
        return out | {"offer": True, "bar": 0.0,
                      "reason": f"The best trial scores {metric} {best:.3f}; no run with the default settings "
                                "has finished on this dataset to compare it with."}
    bar, label = guess
    what = f"marking every pixel as {label}" if task == "segmentation" else f"answering {label} for every image"
    out.update(bar=bar, offer=best > bar)
    if out["offer"]:
        return out | {"reason": f"No run with the default settings has finished on this dataset, so the bar is a "
                                f"constant guess: {what} scores {metric} {bar:.3f} on the validation images; "
                                f"the best trial scores {best:.3f}."}
    return out | {"reason": f"Not offered: the best trial's {metric} ({best:.3f}) does not beat a constant guess "
                            f"({what} scores {bar:.3f} on the validation images), so the search has not found "
                            "settings that learn yet. Try more epochs per trial or another learning-rate range."}


def _scored_images(run_id: str, metric: str) -> int | None:
    """How many validation images the default run's score rests on (Dice: those showing the structure)."""
    best = (store.get_run(run_id) or {}).get("best") or {}
    n = best.get(f"{metric}_n", best.get("n"))
    return int(n) if isinstance(n, (int, float)) and n > 0 else None
