"""Progress on stderr: a live bar in a terminal; a few plain lines when stderr is a file or a pipe (a log or a
script reading --json output should not receive hundreds of carriage-return redraws)."""
from __future__ import annotations

import sys
from typing import Callable, TextIO

from tqdm import tqdm

from engine.training.events import Event, Events

PLAIN_MILESTONES = (0.25, 0.5, 0.75, 1.0)


class Progress:
    """update(done, total) draws a bar on a terminal, or prints a line at 25/50/75/100 % otherwise."""

    def __init__(self, label: str, unit: str, stream: TextIO | None = None) -> None:
        self.label, self.unit = label, unit
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.bar: tqdm | None = None
        self.next_milestone = 0
        self.postfix = ""

    def update(self, done: int, total: int) -> None:
        if self.live:
            if self.bar is None:
                self.bar = tqdm(total=total, desc=self.label, unit=self.unit, file=self.stream, leave=False)
            self.bar.n = done
            self.bar.refresh()
            if done >= total:
                self.close()
            return
        passed = sum(done >= m * total for m in PLAIN_MILESTONES)
        if passed > self.next_milestone:
            extra = f" ({self.postfix})" if self.postfix else ""
            print(f"{self.label}: {done}/{total} {self.unit}s{extra}", file=self.stream, flush=True)
            self.next_milestone = passed

    def note(self, text: str) -> None:
        self.postfix = text
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def finish(self) -> None:
        """Plain mode: one closing line with the latest note (the last milestone came before the last epoch)."""
        if not self.live and self.postfix:
            print(f"{self.label}: finished ({self.postfix})", file=self.stream, flush=True)
        self.close()


def file_progress(label: str, enabled: bool) -> Callable[[int, int], None] | None:
    return Progress(label, "file").update if enabled else None


class TrainProgress:
    """A trainer handler: progress over all optimizer steps, with the latest validation metric."""

    def __init__(self, enabled: bool) -> None:
        self.progress = Progress("Training", "step") if enabled else None
        self.total = 0

    def attach(self, events: Events) -> None:
        if self.progress is None:
            return
        events.on(Event.FIT_START, self.on_fit_start)
        events.on(Event.STEP_END, self.on_step)
        events.on(Event.EPOCH_END, self.on_epoch)
        events.on(Event.FIT_END, lambda **_: self.progress.finish())

    def on_fit_start(self, trainer) -> None:
        self.total = trainer.config.epochs * trainer.steps_per_epoch

    def on_step(self, step: int, **_) -> None:
        self.progress.update(step, self.total)

    def on_epoch(self, trainer, epoch: int, val: dict, **_) -> None:
        monitor = trainer.config.monitor
        self.progress.note(f"epoch {epoch}, {monitor} {val.get(monitor, float('nan')):.3f}")
