"""Which epoch a run keeps: the best value of the monitored metric, and on a tie the lower validation loss (a small
validation set's accuracy saturates while its loss still separates the epochs); early stopping counts the same."""
from __future__ import annotations

from types import SimpleNamespace

from engine.training.trainer import Trainer, TrainState


def _tracker(monitor: str = "accuracy", patience: int = 0) -> Trainer:
    trainer = Trainer.__new__(Trainer)                 # only the bookkeeping: no data, no model
    trainer.config = SimpleNamespace(monitor=monitor, task="classification", early_stopping=patience)
    trainer.state = TrainState()
    return trainer


def _epochs(trainer: Trainer, *history: tuple[float, float]) -> Trainer:
    for epoch, (value, loss) in enumerate(history, start=1):
        trainer.state.epoch = epoch
        trainer._track_best({trainer.config.monitor: value, "loss": loss} if trainer.config.monitor != "loss"
                            else {"loss": value})
    return trainer


def test_a_tie_on_the_metric_goes_to_the_lower_validation_loss():
    trainer = _epochs(_tracker(), (0.5, 1.2), (1.0, 0.10), (1.0, 0.02), (1.0, 0.05), (0.83, 1.3))
    assert trainer.state.best_epoch == 3 and trainer.state.best_metrics["loss"] == 0.02
    assert trainer.state.bad_epochs == 2


def test_a_better_metric_still_wins_over_a_lower_loss():
    trainer = _epochs(_tracker(), (0.9, 0.5), (0.8, 0.01))
    assert trainer.state.best_epoch == 1


def test_early_stopping_waits_while_the_loss_breaks_ties():
    trainer = _epochs(_tracker(patience=2), (1.0, 0.3), (1.0, 0.2), (1.0, 0.1), (1.0, 0.1), (1.0, 0.1))
    assert trainer.state.best_epoch == 3 and trainer.state.should_stop
    assert "did not improve for 2 epochs" in trainer.state.stop_reason


def test_a_loss_monitor_needs_no_tie_break():
    trainer = _epochs(_tracker("loss"), (0.4, 0.0), (0.4, 0.0), (0.3, 0.0))
    assert trainer.state.best_epoch == 3 and trainer.state.best_value == 0.3
