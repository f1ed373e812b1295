"""Handing in a run: check it may be handed in, score its best checkpoint once on the assignment's test split,
store the score. Apart from engine.classroom.assignments because scoring needs torch and that module must not."""
from __future__ import annotations

import numpy as np
import torch

from engine.accounts import access
from engine.accounts.actor import Actor
from engine.classroom import assignments
from engine.data.dataset import load_split
from engine.device import pick_device
from engine.errors import UserError
from engine.inference.predict import load_run_model
from engine.metrics import ClassificationMeter, SegmentationMeter
from engine.runs import store
from engine.runs.paths import has_best_checkpoint

BATCH = 32


def hand_in(actor: Actor | None, name: str, run_id: str) -> dict:
    """Hand in a finished run of one's own on the assignment's dataset; returns the hand-in (without any test value
    for a student while the test is hidden). The student is the run's owner (the actor for a run with none)."""
    found = assignments.get_assignment(name)
    run = access.check_run(actor, run_id, "hand in")
    if run["dataset_id"] != found["dataset_id"]:
        raise UserError(f"Run {run['id']} was trained on another dataset than assignment '{name}'; hand in a run "
                        f"trained on dataset {found['dataset_id']}.")
    student = actor is not None and not actor.is_instructor
    if student and found["deadline"] is not None and store.now() > found["deadline"]:
        raise UserError(f"The deadline of assignment '{name}' passed at {found['deadline_iso']}; "
                        "hand-ins are closed.")
    if run["status"] != "done" or not has_best_checkpoint(run["id"]):
        raise UserError(f"Run {run['id']} has not finished ({run['status']}); hand in a run that is done.")
    if assignments.handin_of_run(run["id"]) is not None:
        raise assignments.already_handed_in(run["id"])
    score = score_on_test(run["id"])
    owner = run.get("owner") or (actor.name if actor else "operator")
    handin = assignments.record_handin(found, owner, run["id"], score)
    return shown_handin(actor, found, handin)


def shown_handin(actor: Actor | None, found: dict, handin: dict) -> dict:
    out = {"assignment": found["name"], "student": handin["student"], "run_id": handin["run_id"],
           "metric": handin["metric"], "value": handin["value"], "score": handin["score"],
           "scored_at": assignments.iso(handin["scored_at"]), "test_visible": found["test_visible"]}
    if actor is not None and not actor.is_instructor and not found["test_visible"]:
        out.update(value=None, score=None)
    return out


@torch.inference_mode()
def score_on_test(run_id: str, device: str = "auto") -> dict:
    """The test-split metrics of the run's best checkpoint: the meters and the 'full' metrics (HD95, intervals)
    that the trainer computes for a run's held-out test at the end of training."""
    _, _, model, config, info = load_run_model(run_id)
    test = load_split(config.dataset_id, "test", config.image_size)
    if len(test.images) == 0:
        raise UserError(f"Dataset {config.dataset_id} has no test images, so run {run_id} cannot be scored.")
    dev = pick_device(device)
    model = model.to(dev, memory_format=torch.channels_last).eval()
    k = int(info["num_classes"])
    segmentation = info["task"] == "segmentation"
    meter = SegmentationMeter(k, with_hd95=True) if segmentation else ClassificationMeter(k)
    for first in range(0, len(test.images), BATCH):
        x = torch.from_numpy(test.images[first:first + BATCH].astype(np.float32))
        y = torch.from_numpy(test.targets[first:first + BATCH].astype(np.int64))
        meter.update(model(x.to(dev).contiguous(memory_format=torch.channels_last)).float(), y.to(dev))
    metrics = meter.compute(intervals=True)
    if not segmentation:
        metrics["confusion"] = meter.confusion().tolist()
    metrics["n"] = len(test.images)
    return metrics
