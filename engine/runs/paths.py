"""Where a run's files live: one folder per run id under the workspace (checkpoints, samples, train.log).

A run id is data, never a path fragment: run_dir refuses anything but a well-formed id (store.RUN_ID), and
checkpoint_path, which user-chosen ids reach (predict, export), also looks the run up in the store first."""
from __future__ import annotations

import json
from pathlib import Path

from engine import workspace
from engine.errors import UserError, shown
from engine.runs import store


def run_dir(run_id: str) -> Path:
    if not store.is_run_id(run_id):
        raise store.no_such_run(run_id)
    return workspace.runs_dir() / run_id


WEIGHTS_NOTE = "weights.json"       # what the run kept of the weights it started from (written by the Trainer)


def weights_note(run_id: str) -> str | None:
    """What the run kept of the weights it started from, in one sentence ("Kept 52 of 54 tensors from run …");
    None when it started from scratch or has not started yet. Torch-free: the CLI's run listings read it."""
    try:
        return json.loads((run_dir(run_id) / WEIGHTS_NOTE).read_text())["message"]
    except (OSError, ValueError, KeyError, TypeError, UserError):
        return None


def worker_log(run_id: str) -> Path:
    return run_dir(run_id) / "train.log"


def latest_preview(run_id: str) -> Path | None:
    """The newest epoch's sample-prediction picture, if any epoch has finished."""
    found = sorted((run_dir(run_id) / "samples").glob("epoch_*.png"))
    return found[-1] if found else None


def checkpoint_path(run_id: str) -> Path:
    """best.pt (the model selected on validation), else last.pt while a run has not improved yet."""
    run = store.get_run(run_id) if store.is_run_id(run_id) else None
    if run is None:
        raise UserError(f"There is no run '{shown(run_id)}', so no saved model to use; "
                        "`python -m engine runs` lists the runs.")
    folder = run_dir(run["id"])
    for name in ("best.pt", "last.pt"):
        if (folder / name).exists():
            return folder / name
    raise UserError(f"Run {run['id']} has no saved model yet; wait until its first epoch has finished.")


def has_best_checkpoint(run_id: str) -> bool:
    return store.is_run_id(run_id) and (run_dir(run_id) / "best.pt").exists()
