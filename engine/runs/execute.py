"""Executes one stored run in this process: builds the Trainer, attaches handlers, records the outcome.

What a worker's child process (`engine run-job`) and `engine train` run; the only part of engine.runs that
imports training."""
from __future__ import annotations

import sys
import threading
import traceback
from pathlib import Path
from typing import Sequence

import torch

from engine.accounts import users
from engine.classroom import assignments
from engine.config import RunConfig
from engine.data.dataset import load_split
from engine.errors import UserError, one_line, shown
from engine.models.checkpoints import load_checkpoint, write_failure
from engine.runs import store
from engine.runs.paths import run_dir
from engine.training.distributed import new_trainer, release
from engine.training.events import Events, Handler
from engine.training.handlers import Checkpointer, EpochReplanner, PreviewRenderer, StoreLogger
from engine.training.stops import RunCancelled, RunPruned, TrainingStopped
from engine.training.trainer import Trainer

HEARTBEAT_SECONDS = 2.0


def evaluate_test_split(trainer: Trainer) -> dict | None:
    """Score the best checkpoint on the held-out test split (never used for training or model selection)."""
    best = trainer.run_dir / "best.pt"
    test = load_split(trainer.config.dataset_id, "test", trainer.config.image_size)
    if not best.exists() or len(test.images) == 0:
        return None
    state = load_checkpoint(best, trainer.run_dir.name, map_location=trainer.device)
    trainer.model.load_state_dict(state["model"])
    images = torch.from_numpy(test.images.astype("float32"))
    metrics = trainer.evaluate(images, torch.from_numpy(test.targets.astype("int64")), full=True)
    metrics["n"] = len(test.images)
    return metrics


def test_is_hidden(run: dict) -> bool:
    """A student's run on an assignment whose test split is hidden is never scored on it by training: the test
    is scored once, at hand-in (engine.classroom.handins), so no later read can leak a number to tune against."""
    owner = run.get("owner")
    return (bool(owner) and owner not in users.instructors()
            and run["dataset_id"] in assignments.hidden_test_datasets())


def execute_run(run_id: str, resume: bool = False, handlers: Sequence[Handler] = ()) -> dict:
    """Train a stored run to its end; the final status and message land in the store. Returns the run row.

    `handlers` are extra listeners (a progress bar, a search's pruner) attached after the standard ones."""
    run = store.require_run(run_id)
    config = RunConfig.from_dict(run["config"])
    folder = run_dir(run["id"])
    store.update_run(run_id, cancel_requested=False, attempts=(run["attempts"] or 0) + 1)
    trainer = None
    try:
        events = Events()
        trainer = new_trainer(config, folder, events, resume=resume)   # config.devices > 1: rank 0 of N processes
        start = 0
        last = folder / "last.pt"
        if resume and last.exists():
            start = trainer.restore(last)
        store.delete_metrics_after(run_id, start)
        replanner = EpochReplanner(lambda epochs, note: store.replan_epochs(run_id, epochs, note))
        for handler in (StoreLogger(run_id), replanner, Checkpointer(), PreviewRenderer(config.preview_samples),
                        *handlers):
            handler.attach(events)
        store.update_run(run_id, epoch=start)
        state = trainer.fit(start_epoch=start)
        test = None if test_is_hidden(run) else evaluate_test_split(trainer)
        store.update_run(run_id, test=test, progress=1.0)
        store.set_status(run_id, "done", state.stop_reason, only_if=store.STARTED)
    except RunCancelled:
        store.set_status(run_id, "cancelled", "Stopped by the user; resume continues from the last finished epoch.",
                         only_if=store.STARTED)       # cancelled while starting: keep that message
    except RunPruned as exc:
        store.set_status(run_id, "pruned", str(exc), only_if=store.STARTED)
    except (UserError, TrainingStopped) as exc:
        store.set_status(run_id, "failed", one_line(exc, 1000), only_if=store.STARTED)
    except OSError as exc:
        traceback.print_exc(file=sys.stderr)
        store.set_status(run_id, "failed", _os_failure(folder, exc), only_if=store.STARTED)
    except Exception as exc:  # noqa: BLE001 - anything unexpected still ends the run with a readable status
        traceback.print_exc(file=sys.stderr)
        store.set_status(run_id, "failed", f"Unexpected error: {type(exc).__name__}: {one_line(exc, 300)}",
                         only_if=store.STARTED)
    finally:
        release(trainer)        # a run on several devices: its other processes end with it
    return store.get_run(run_id)


def _os_failure(folder: Path, exc: OSError) -> str:
    """A write into the run folder that failed (a sample picture, the log) names the folder and the cause; any
    other OSError (e.g. reading the dataset) says which file."""
    target = Path(exc.filename) if exc.filename else None
    if target is not None and (target == folder or folder in target.parents):
        return write_failure(folder, exc, target.name if target != folder else "the run's files")
    where = f" ({shown(exc.filename, 200)})" if exc.filename else ""
    return f"Unexpected error: {type(exc).__name__}: {one_line(exc.strerror or exc, 300)}{where}"


def heartbeat_thread(run_id: str, stop: threading.Event) -> threading.Thread:
    """Keeps a run's heartbeat fresh while its process lives, even during long cache builds or evaluation."""
    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                store.update_run(run_id, heartbeat_at=store.now())
            except Exception:  # noqa: BLE001 - a missed beat is harmless; the next one retries
                pass
    thread = threading.Thread(target=beat, daemon=True, name=f"heartbeat-{run_id}")
    thread.start()
    return thread


def run_job(run_id: str, resume: bool = False, handlers: Sequence[Handler] = ()) -> dict:
    """Execute one claimed run in this process, with a heartbeat (worker children and `engine train`)."""
    stop = threading.Event()
    heartbeat_thread(run_id, stop)
    try:
        return execute_run(run_id, resume=resume, handlers=handlers)
    finally:
        stop.set()
