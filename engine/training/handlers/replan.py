"""Re-plan an Auto run's epochs from its own epochs: the preset chose them from a timing probe of a few steps, and
on a shared machine the probe, or the epochs after it, fall into other work's bursts of load (benchmarks/auto.md:
9 epochs in 222 s of 300; 14 epochs in 221 s of 300 when the only re-plan looked once, after epoch 2, and the
machine sped up later). So after every epoch but the first one of a process (it includes warm-up), the run times
its recent epochs and, when the plan no longer fits the time left, takes the epochs that fill 90 % of it:
- more epochs when the plan would leave over a fifth of the time left unused (never more than the preset allowed:
  300, or an assignment's cap);
- fewer when the plan would overrun the time left by over a tenth: the time limit would cut the run before its
  cosine schedule reaches the low rates of the last epochs, which are often the best.
The gap between the two thresholds keeps ordinary jitter from re-planning every epoch; the learning-rate schedule is
stretched (or shortened) to the new end each time."""
from __future__ import annotations

import sys
from collections.abc import Callable

from engine.training.events import Event

RECENT = 3                  # epochs whose mean time predicts the next ones (the machine's speed changes)
EXTEND_BELOW = 0.8          # re-plan when the plan would use less than this share of the time left ...
SHRINK_ABOVE = 1.1          # ... or more than this share of it
FILL = 0.9                  # of the time left that the new plan fills (validation time varies too)
MOST_EPOCHS = 300           # engine.presets.auto.MAX_EPOCHS, for a preset record without "most_epochs"

Persist = Callable[[int, dict], None]      # (new epochs, what was measured) -> the run's stored settings


def replans(config) -> bool:
    """Only a single-device Auto run with a time limit and a schedule that can be stretched, whose epochs (and
    time limit) are still the preset's: epochs the user set are the user's."""
    preset = config.preset or {}
    chosen_by_user = set(preset.get("overridden") or ()) & {"epochs", "time_limit_minutes", "schedule"}
    return (preset.get("name") == "auto" and not chosen_by_user and config.time_limit_minutes > 0
            and config.devices == 1 and config.schedule != "onecycle")


def replanned_epochs(epoch: int, planned: int, epoch_seconds: float, seconds_left: float, most: int) -> int:
    """The epochs an Auto run should train to, after `epoch` of `planned`, when an epoch takes `epoch_seconds` and
    `seconds_left` remain of its time limit: `planned` itself while the plan fits the time left."""
    if epoch_seconds <= 0 or seconds_left <= 0:
        return planned
    needed = (planned - epoch) * epoch_seconds
    if EXTEND_BELOW * seconds_left <= needed <= SHRINK_ABOVE * seconds_left:
        return planned
    fitting = epoch + int(FILL * seconds_left / epoch_seconds)
    if needed < EXTEND_BELOW * seconds_left:
        return max(planned, min(most, fitting))
    return min(planned, max(epoch + 1, fitting))     # the time limit, not the plan, ends a run with no epoch left


class EpochReplanner:
    def __init__(self, persist: Persist | None = None) -> None:
        self.persist = persist
        self.seconds: list[float] = []          # epochs timed in this process; the first (warm-up) is left out
        self.replans = 0

    def attach(self, events) -> None:
        events.on(Event.EPOCH_END, self.on_epoch)

    def on_epoch(self, trainer, epoch: int, seconds: float, **_) -> None:
        config = trainer.config
        self.seconds.append(seconds)
        if len(self.seconds) < 2 or trainer.state.should_stop or not replans(config):
            return
        recent = self.seconds[1:][-RECENT:]
        epoch_seconds = sum(recent) / len(recent)
        left = config.time_limit_minutes * 60 - trainer.state.train_seconds
        most = int(((config.preset or {}).get("probe") or {}).get("most_epochs") or MOST_EPOCHS)
        epochs = replanned_epochs(epoch, config.epochs, epoch_seconds, left, most)
        if epochs == config.epochs:
            return
        self.replans += 1
        note = {"after_epoch": epoch, "epoch_seconds": round(epoch_seconds, 2), "from_epochs": config.epochs,
                "to_epochs": epochs, "times": self.replans}
        trainer.change_epochs(epochs)
        print(f"Re-planned after epoch {epoch}: an epoch now takes {epoch_seconds:.1f} s, so {epochs} epochs (not "
              f"{note['from_epochs']}) fit the {config.time_limit_minutes:g}-minute budget.", file=sys.stderr,
              flush=True)
        if self.persist is not None:
            self.persist(epochs, note)
