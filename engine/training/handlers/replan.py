"""Re-plan an Auto run's epochs from its own epochs: the preset chose them from a timing probe of a few steps, and
on a shared machine a probe that fell into someone else's burst of load plans a fraction of the budget
(benchmarks/auto.md: 9 epochs in 222 s of 300; 34 epochs, early-stopped after 54 s). After the second epoch (the
first includes warm-up) the real epoch time is known: when the plan would leave over a third of the time limit
unused, the run gets the epochs that fill it (never more than the preset allowed: 300, or an assignment's cap),
and the learning-rate schedule is stretched to the new end. A run never gets fewer epochs here: the time limit
already stops one that the probe made too long."""
from __future__ import annotations

import sys
from collections.abc import Callable

from engine.training.events import Event

REPLAN_AFTER = 2            # epochs measured before re-planning (the first includes warm-up)
UNUSED_SHARE = 1 / 3        # re-plan when the plan would leave more than this share of the time left unused
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


class EpochReplanner:
    def __init__(self, persist: Persist | None = None) -> None:
        self.persist = persist

    def attach(self, events) -> None:
        events.on(Event.EPOCH_END, self.on_epoch)

    def on_epoch(self, trainer, epoch: int, seconds: float, **_) -> None:
        config = trainer.config
        if epoch != REPLAN_AFTER or trainer.state.should_stop or not replans(config):
            return
        left = config.time_limit_minutes * 60 - trainer.state.train_seconds
        planned = (config.epochs - epoch) * seconds
        if seconds <= 0 or planned >= (1 - UNUSED_SHARE) * left:
            return
        most = int(((config.preset or {}).get("probe") or {}).get("most_epochs") or MOST_EPOCHS)
        epochs = min(most, epoch + int(FILL * left / seconds))
        if epochs <= config.epochs:
            return
        note = {"after_epoch": epoch, "epoch_seconds": round(seconds, 2), "from_epochs": config.epochs,
                "to_epochs": epochs}
        trainer.extend_epochs(epochs)
        print(f"Re-planned: an epoch took {seconds:.1f} s, so {epochs} epochs (not {note['from_epochs']}) fill the "
              f"{config.time_limit_minutes:g}-minute budget.", file=sys.stderr, flush=True)
        if self.persist is not None:
            self.persist(epochs, note)
