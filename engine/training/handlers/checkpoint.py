"""last.pt after every epoch (for resume), best.pt when the monitored metric improves."""
from __future__ import annotations

from engine.training.events import Event, Events


class Checkpointer:
    def attach(self, events: Events) -> None:
        events.on(Event.EPOCH_END, self.on_epoch)

    def on_epoch(self, trainer, epoch: int, **_) -> None:
        if trainer.state.best_epoch == epoch:
            trainer.save("best.pt")
        trainer.save("last.pt")
