"""An Auto run re-plans its epochs after the second one when the timing probe was pessimistic: it takes the epochs
that fill its time limit (within the preset's cap), the cosine schedule still ends at zero on the new last epoch,
and the stored run says so. Runs without the Auto preset, or whose plan already fills the budget, are unchanged."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from engine.config import RunConfig
from engine.runs import execute, store
from engine.runs.paths import run_dir
from engine.runs.submit import create_run
from engine.training.handlers import EpochReplanner


def _auto(dataset_id: str, epochs: int = 3, most: int = 7, minutes: float = 10.0, **overrides) -> RunConfig:
    preset = {"name": "auto", "budget_minutes": minutes, "values": {"epochs": epochs}, "reasons": {},
              "probe": {"most_epochs": most}, "overridden": []}
    base = {"dataset_id": dataset_id, "arch": "lenet5", "epochs": epochs, "batch_size": 8, "image_size": 32,
            "preview_samples": 0, "schedule": "cosine", "time_limit_minutes": minutes, "preset": preset}
    return RunConfig(**{**base, **overrides})


def test_a_pessimistic_plan_is_extended_to_fill_the_budget(tiny_classification):
    run_id = create_run(_auto(tiny_classification), status="starting")
    run = execute.run_job(run_id)
    assert run["status"] == "done" and run["epoch"] == 7 and run["epochs"] == 7      # 3 planned; the cap is 7
    assert run["config"]["epochs"] == 7 and run["config"]["preset"]["values"]["epochs"] == 7
    note = run["config"]["preset"]["replanned"]
    assert (note["after_epoch"], note["from_epochs"], note["to_epochs"]) == (2, 3, 7) and note["epoch_seconds"] > 0
    lrs = [m["value"] for m in store.get_metrics(run_id) if m["name"] == "lr"]
    assert len(lrs) == 7 and lrs[-1] == pytest.approx(0.0, abs=1e-9)                # cosine ends on the new last
    assert lrs[2] > 0.5 * run["config"]["lr"]          # stretched: epoch 3 of 7 is not epoch 3 of 3's near-zero
    last = torch.load(run_dir(run_id) / "last.pt", weights_only=False)
    assert last["config"]["epochs"] == 7                                           # a resume trains to 7


def _user_set_epochs(dataset_id: str) -> dict:
    preset = _auto(dataset_id).preset
    return {"preset": {**preset, "overridden": ["epochs"]}}


@pytest.mark.parametrize("change", [{"preset": {}}, {"time_limit_minutes": 0.0}, {"schedule": "onecycle"}, "user"])
def test_runs_without_the_auto_preset_or_a_time_limit_keep_their_epochs(tiny_classification, change):
    if change == "user":                  # Auto, then the user typed the epochs: 3 means 3
        change = _user_set_epochs(tiny_classification)
    run = execute.run_job(create_run(_auto(tiny_classification, **change), status="starting"))
    assert run["status"] == "done" and run["epoch"] == 3 and run["epochs"] == 3
    assert "replanned" not in (run["config"]["preset"] or {})


def test_a_plan_that_fills_the_budget_is_left_alone(tiny_classification):
    # Timed epochs of this tiny set take 0.01-1 s depending on the machine's load, so the epoch time is given here:
    # 20 s per epoch, 1 of 3 epochs left after epoch 2, 60 s of a 1-minute limit spent: the plan fills what is left
    config = _auto(tiny_classification, minutes=1.0)
    trainer = SimpleNamespace(config=config, state=SimpleNamespace(should_stop=False, train_seconds=40.0),
                              extend_epochs=lambda epochs: pytest.fail("extended a plan that fills the budget"))
    saved = []
    EpochReplanner(lambda epochs, note: saved.append(epochs)).on_epoch(trainer, epoch=2, seconds=20.0)
    assert config.epochs == 3 and saved == [] and "replanned" not in config.preset
    trainer.state.train_seconds = 4.0             # the same epochs after 4 s of 60: far too few, so it extends
    trainer.extend_epochs = lambda epochs: setattr(config, "epochs", epochs)
    EpochReplanner(lambda epochs, note: saved.append(epochs)).on_epoch(trainer, epoch=2, seconds=2.0)
    assert config.epochs == saved[0] == 7         # the preset's cap of 7 in _auto


def test_the_cap_is_the_assignments_when_auto_was_capped(tiny_classification):
    run = execute.run_job(create_run(_auto(tiny_classification, most=4), status="starting"))
    assert run["epoch"] == 4 and run["config"]["preset"]["replanned"]["to_epochs"] == 4
    assert not math.isnan(run["best_value"])
