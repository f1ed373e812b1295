"""Re-plan an Auto run's epochs from its own epochs: the preset chose them from a timing probe of a few steps, and
on a shared machine the probe, or the epochs after it, fall into other work's bursts of load (benchmarks/auto.md:
9 epochs in 222 s of 300; 14 epochs in 221 s of 300 when the only re-plan looked once, after epoch 2, and the
machine sped up later). So after every epoch but the first one of a process (it includes warm-up), the run times
its recent epochs and, when its plan no longer fits the time left, takes the epochs that end it a little before
the limit (RESERVE, for the variation of epoch times):
- more epochs when the plan would leave over UNUSED of the whole time limit unused (never more than the preset
  allowed: 300, or an assignment's cap);
- fewer when the plan would overrun the limit at all: the limit would cut the run before its cosine schedule
  reaches the low rates of the last epochs, which are often the best.
Measured against the whole limit, not the time left: a plan that keeps its reserve stays inside the band to the end
(a band relative to the time left re-planned 24-28 times in a 5-minute run as the time left shrank). The
learning-rate schedule is stretched (or shortened) to the new end each time."""
from __future__ import annotations

import sys
from collections.abc import Callable

from engine.training.events import Event

RECENT = 5                  # epochs whose mean time predicts the next ones (the machine's speed changes)
RESERVE = 0.05              # of the time limit left over at the planned end: epoch times vary
UNUSED = 0.12               # re-plan when the plan would leave more than this share of the limit unused (or overrun it)
MOST_EPOCHS = 300           # engine.presets.auto.MAX_EPOCHS, for a preset record without "most_epochs"

Persist = Callable[[int, dict], None]      # (new epochs, what was measured) -> the run's stored settings


def replans(config) -> bool:
    """Only a single-device Auto run with a time limit and a schedule that can be stretched, whose epochs (and
    time limit) are still the preset's: epochs the user set are the user's."""
    preset = config.preset or {}
    chosen_by_user = set(preset.get("overridden") or ()) & {"epochs", "time_limit_minutes", "schedule"}
    return (preset.get("name") == "auto" and not chosen_by_user and config.time_limit_minutes > 0
            and config.devices == 1 and config.schedule != "onecycle")


def replanned_epochs(epoch: int, planned: int, epoch_seconds: float, seconds_left: float, limit: float,
                     most: int) -> int:
    """The epochs an Auto run should train to, after `epoch` of `planned`, when an epoch takes `epoch_seconds` and
    `seconds_left` remain of its `limit` (seconds): `planned` itself while the plan fits the time left."""
    if epoch_seconds <= 0 or seconds_left <= 0:
        return planned
    unused = seconds_left - (planned - epoch) * epoch_seconds          # negative: the plan overruns the limit
    if 0 <= unused <= UNUSED * limit:
        return planned
    fitting = epoch + int((seconds_left - RESERVE * limit) / epoch_seconds)
    if unused > 0:
        return max(planned, min(most, fitting))
    return min(planned, max(epoch + 1, fitting))     # the time limit, not the plan, ends a run with no epoch left


class EpochReplanner:
    def __init__(self, persist: Persist | None = None) -> None:
        self.persist = persist
        self.seconds: list[float] = []          # epochs timed in this process; the first (warm-up) is left out

    def attach(self, events) -> None:
        events.on(Event.EPOCH_END, self.on_epoch)

    def on_epoch(self, trainer, epoch: int, seconds: float, **_) -> None:
        config = trainer.config
        self.seconds.append(seconds)
        if len(self.seconds) < 2 or trainer.state.should_stop or not replans(config):
            return
        recent = self.seconds[1:][-RECENT:]
        epoch_seconds = sum(recent) / len(recent)
        limit = config.time_limit_minutes * 60
        most = int(((config.preset or {}).get("probe") or {}).get("most_epochs") or MOST_EPOCHS)
        epochs = replanned_epochs(epoch, config.epochs, epoch_seconds, limit - trainer.state.train_seconds, limit,
                                  most)
        if epochs == config.epochs:
            return
        note = {"after_epoch": epoch, "epoch_seconds": round(epoch_seconds, 2), "from_epochs": config.epochs,
                "to_epochs": epochs}
        trainer.change_epochs(epochs)
        print(f"Re-planned after epoch {epoch}: an epoch now takes {epoch_seconds:.1f} s, so {epochs} epochs (not "
              f"{note['from_epochs']}) fit the {config.time_limit_minutes:g}-minute budget.", file=sys.stderr,
              flush=True)
        if self.persist is not None:
            self.persist(epochs, note)
