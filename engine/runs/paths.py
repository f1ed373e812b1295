"""Where a run's files live: one folder per run id under the workspace (checkpoints, samples, train.log)."""
from __future__ import annotations

from pathlib import Path

from engine import workspace
from engine.errors import UserError


def run_dir(run_id: str) -> Path:
    return workspace.runs_dir() / run_id


def worker_log(run_id: str) -> Path:
    return run_dir(run_id) / "train.log"


def latest_preview(run_id: str) -> Path | None:
    """The newest epoch's sample-prediction picture, if any epoch has finished."""
    found = sorted((run_dir(run_id) / "samples").glob("epoch_*.png"))
    return found[-1] if found else None


def checkpoint_path(run_id: str) -> Path:
    """best.pt (the model selected on validation), else last.pt while a run has not improved yet."""
    folder = run_dir(run_id)
    for name in ("best.pt", "last.pt"):
        if (folder / name).exists():
            return folder / name
    raise UserError(f"Run {run_id} has no saved model yet; wait until its first epoch has finished.")


def has_best_checkpoint(run_id: str) -> bool:
    return (run_dir(run_id) / "best.pt").exists()
