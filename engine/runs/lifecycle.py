"""A run's life after it exists, as the user drives it: cancel, resume, delete; and dataset deletion, refused
while runs use the dataset. Light on purpose (no torch): the CLI's queue commands answer in well under a second.
Creating a run (validated against its dataset and model) is engine.runs.submit. Each takes the actor: a student
acts only on their own runs and datasets (engine.accounts.access); None is the operator."""
from __future__ import annotations

import shutil

from engine.accounts import access
from engine.accounts.actor import Actor
from engine.data.manifest import delete_dataset as remove_dataset_folder
from engine.data.manifest import load_manifest
from engine.errors import UserError
from engine.runs import queue, store
from engine.runs.paths import run_dir


def _existing(run_id: str) -> dict:
    return store.require_run(run_id)


def cancel(run_id: str, actor: Actor | None = None) -> str:
    """Stop a run. Queued and still-starting runs are cancelled at once (the worker ends a starting process);
    a running one stops at its next step boundary."""
    run = access.check_run(actor, run_id, "stop")
    if run["status"] == "queued":
        if store.set_status(run_id, "cancelled", "Cancelled before it started.", only_if=("queued",)):
            queue.drop_queued_jobs(run_id)
            return "cancelled"
        run = _existing(run_id)
    if run["status"] == "starting":
        store.request_cancel(run_id)
        if store.set_status(run_id, "cancelled", "Cancelled while it was starting; resume starts it again.",
                            only_if=("starting",)):
            return "cancelled"
        run = _existing(run_id)
    if run["status"] == "running":
        store.request_cancel(run_id)
        return "cancelling"
    return run["status"]


def resume(run_id: str, actor: Actor | None = None) -> str:
    """Queue a stopped run again; it continues from its last finished epoch."""
    run = access.check_run(actor, run_id, "resume")
    if run["status"] in store.ACTIVE:
        raise UserError(f"Run {run_id} is already {run['status']}.")
    if run["status"] == "done" and run["epoch"] >= run["epochs"]:
        raise UserError(f"Run {run_id} already finished all its epochs; start a new run to train longer.")
    if not store.set_status(run_id, "queued", "", only_if=store.FINISHED):
        raise UserError(f"Run {run_id} changed state meanwhile; try again.")
    store.update_run(run_id, cancel_requested=False)
    queue.enqueue(run_id, resume=True)
    return "queued"


def delete(run_id: str, actor: Actor | None = None) -> str:
    """Delete a finished run: its store rows, checkpoints, sample pictures and log. Queued or running runs are
    refused (stop them first), so nothing a worker is writing disappears under it."""
    run = access.check_run(actor, run_id, "delete")
    if run["status"] in store.ACTIVE:
        raise UserError(f"Run {run_id} is {run['status']}; stop it before deleting it.")
    if not store.delete_run(run_id):
        raise UserError(f"Run {run_id} changed state meanwhile; try again.")
    shutil.rmtree(run_dir(run["id"]), ignore_errors=True)      # checkpoints, samples, train.log
    return "deleted"


def delete_dataset(dataset_id: str, actor: Actor | None = None) -> str:
    """Delete an ingested dataset (its images, masks and caches). Refused while a queued or running run uses
    it; finished runs keep their results and checkpoints, and can still predict. A student deletes only their own."""
    manifest = load_manifest(dataset_id)        # refuses an id that is not a dataset's (never a path) in one line
    if actor is not None and not actor.is_instructor and manifest.get("owner") != actor.name:
        raise access.AccessDenied(f"Dataset {dataset_id} is not yours; you can only delete your own datasets.")
    busy = [r["id"] for r in store.list_runs(status=store.ACTIVE) if r["dataset_id"] == dataset_id]
    if busy:
        raise UserError(f"{len(busy)} run(s) queued or running use this dataset ({', '.join(busy[:3])}); "
                        "stop them before deleting it.")
    remove_dataset_folder(dataset_id)
    return "deleted"
