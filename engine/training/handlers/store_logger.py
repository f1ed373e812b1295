"""Writes step losses and epoch metrics to the run store in small batches, and honours cancel requests."""
from __future__ import annotations

import time

import torch

from engine.runs import store
from engine.training.events import Event, Events
from engine.training.stops import RunCancelled


def scalar_items(metrics: dict) -> list[tuple[str, float]]:
    return [(k, float(v)) for k, v in metrics.items() if isinstance(v, (int, float))]


class StoreLogger:
    def __init__(self, run_id: str, flush_seconds: float = 1.0) -> None:
        self.run_id = run_id
        self.flush_seconds = flush_seconds
        self.pending: list[tuple[int, int, torch.Tensor]] = []
        self.last_flush = time.monotonic()

    def attach(self, events: Events) -> None:
        events.on(Event.FIT_START, self.on_fit_start)
        events.on(Event.STEP_END, self.on_step)
        events.on(Event.EPOCH_END, self.on_epoch)
        events.on(Event.FIT_END, self.on_fit_end)

    def on_fit_start(self, trainer) -> None:
        """'starting' (claimed, importing, loading data) becomes 'running' only now; a cancel that came first wins."""
        if store.set_status(self.run_id, "running", only_if=("starting", "running")):
            return
        raise RunCancelled()

    def on_step(self, trainer, epoch: int, step: int, loss: torch.Tensor) -> None:
        self.pending.append((epoch, step, loss))    # a tensor: reading it now would sync the GPU every step
        if time.monotonic() - self.last_flush >= self.flush_seconds:
            self.flush(trainer)

    def flush(self, trainer) -> None:
        self.last_flush = time.monotonic()
        if self.pending:
            values = torch.stack([loss for _, _, loss in self.pending]).float().cpu().tolist()
            rows = [(e, s, "train", "loss", v) for (e, s, _), v in zip(self.pending, values)]
            self.pending.clear()
            store.log_metrics(self.run_id, rows)
        total = trainer.config.epochs * trainer.steps_per_epoch
        store.update_run(self.run_id, progress=min(1.0, trainer.state.step / total))
        run = store.get_run(self.run_id)
        if run and run["cancel_requested"]:
            raise RunCancelled()

    def on_epoch(self, trainer, epoch: int, train: dict, val: dict, seconds: float) -> None:
        self.flush(trainer)
        step = trainer.state.step
        rows = [(epoch, step, "train", f"epoch_{k}" if k == "loss" else k, v) for k, v in scalar_items(train)]
        rows += [(epoch, step, "val", k, v) for k, v in scalar_items(val)]
        rows += [(epoch, step, "train", "lr", trainer.optimizer.param_groups[0]["lr"]),
                 (epoch, step, "train", "epoch_seconds", seconds)]
        store.log_metrics(self.run_id, rows)
        state = trainer.state
        run = store.get_run(self.run_id)
        store.update_run(self.run_id, epoch=epoch, best_metric=trainer.config.monitor, best_value=state.best_value,
                         best_epoch=state.best_epoch, best=state.best_metrics,
                         train_seconds=(run["train_seconds"] or 0.0) + seconds)

    def on_fit_end(self, trainer) -> None:
        self.flush(trainer)
