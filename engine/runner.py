"""Executes one stored run: builds the Trainer, attaches handlers, records the outcome in the store."""
from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Callable

import torch

from engine import settings, store
from engine.config import RunConfig, check_config
from engine.data.dataset import load_split
from engine.errors import UserError
from engine.events import Events
from engine.handlers import Checkpointer, PreviewRenderer, RunCancelled, RunPruned, StoreLogger
from engine.train import Trainer, TrainingStopped


def run_dir(run_id: str) -> Path:
    return settings.runs_dir() / run_id


def create_run(config: RunConfig, status: str = "queued", study: str | None = None,
               trial: int | None = None) -> str:
    """Validate a config against its dataset and architecture, then record it as a new run."""
    from engine.models.registry import parameter_count
    manifest = check_config(config)
    params = parameter_count(config.arch, manifest["channels"], manifest["num_classes"], options=config.model_options)
    return store.create_run(config.to_dict(), status=status, params=params, study=study, trial=trial)


def evaluate_test_split(trainer: Trainer) -> dict | None:
    """Score the best checkpoint on the held-out test split (never used for training or model selection)."""
    best = trainer.run_dir / "best.pt"
    test = load_split(trainer.config.dataset_id, "test", trainer.config.image_size)
    if not best.exists() or len(test.images) == 0:
        return None
    state = torch.load(best, map_location=trainer.device, weights_only=True)
    trainer.model.load_state_dict(state["model"])
    images = torch.from_numpy(test.images.astype("float32"))
    metrics = trainer.evaluate(images, torch.from_numpy(test.targets.astype("int64")), full=True)
    metrics["n"] = len(test.images)
    return metrics


def execute_run(run_id: str, resume: bool = False,
                on_trainer: Callable[[Trainer, Events], None] | None = None) -> dict:
    """Train a stored run to its end; the final status and message land in the store. Returns the run row."""
    run = store.get_run(run_id)
    if run is None:
        raise UserError(f"There is no run '{run_id}'.")
    config = RunConfig.from_dict(run["config"])
    folder = run_dir(run_id)
    store.update_run(run_id, cancel_requested=False, attempts=(run["attempts"] or 0) + 1)
    try:
        events = Events()
        trainer = Trainer(config, folder, events)
        start = 0
        last = folder / "last.pt"
        if resume and last.exists():
            start = trainer.restore(last)
        store.delete_metrics_after(run_id, start)
        logger = StoreLogger(run_id)
        for handler in (logger, Checkpointer(), PreviewRenderer(config.preview_samples)):
            handler.attach(events)
        if on_trainer:
            on_trainer(trainer, events)
        store.update_run(run_id, epoch=start)
        state = trainer.fit(start_epoch=start)
        logger.flush(trainer)
        test = evaluate_test_split(trainer)
        store.update_run(run_id, test=test, progress=1.0)
        store.set_status(run_id, "done", state.stop_reason)
    except RunCancelled:
        store.set_status(run_id, "cancelled", "Stopped by the user; resume continues from the last finished epoch.")
    except RunPruned as exc:
        store.set_status(run_id, "pruned", str(exc))
    except (UserError, TrainingStopped) as exc:
        store.set_status(run_id, "failed", str(exc))
    except Exception as exc:  # noqa: BLE001 - anything unexpected still ends the run with a readable status
        traceback.print_exc(file=sys.stderr)
        store.set_status(run_id, "failed", f"Unexpected error: {type(exc).__name__}: {exc}")
    return store.get_run(run_id)
