"""An Auto run re-plans its epochs whenever its own epoch times say the plan no longer fits the time left: more
epochs to fill the time limit (within the preset's cap), fewer when the machine slows down; the cosine schedule
still ends at zero on the new last epoch, and the stored run says so. Runs without the Auto preset, or whose plan
already fills the budget, are unchanged."""
from __future__ import annotations

import math
import time
from types import SimpleNamespace

import pytest
import torch

from engine.config import RunConfig
from engine.runs import execute, store
from engine.runs.paths import run_dir
from engine.runs.submit import create_run
from engine.training.events import Event
from engine.training.handlers import EpochReplanner
from engine.training.handlers.replan import replanned_epochs


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
    assert note["first_epochs"] == 3 and note["times"] == 1                       # the probe's plan is kept
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


def test_a_plan_that_fits_the_time_left_is_left_alone_and_one_that_does_not_is_replanned():
    # (epoch, planned, epoch seconds, seconds left, limit, cap) -> epochs; the reserve is 5 % of the limit
    assert replanned_epochs(2, 3, 20.0, 20.0, 60, 7) == 3          # 1 epoch of 20 s left, 20 s left: it fits
    assert replanned_epochs(2, 12, 5.0, 52.0, 60, 300) == 12       # 2 s of 60 unused: within the band
    assert replanned_epochs(2, 3, 2.0, 56.0, 60, 7) == 7           # far too few: extended, up to the cap
    assert replanned_epochs(2, 3, 2.0, 56.0, 60, 300) == 2 + 26    # 56 s less the 3-s reserve, in 2-s epochs
    assert replanned_epochs(5, 20, 10.0, 60.0, 100, 300) == 10     # 150 s needed, 60 left: 55 s of epochs
    assert replanned_epochs(5, 20, 100.0, 60.0, 100, 300) == 6     # never below one more (the time limit decides)
    assert replanned_epochs(17, 17, 4.0, 2.0, 60, 300) == 17       # 2 s left, 4-s epochs: nothing added


def _simulate(epoch_seconds, planned: int, minutes: float = 1.0, most: int = 300, replan: bool = True):
    """An Auto run whose epochs take epoch_seconds(epoch), with the trainer's time-limit rule; returns the
    epochs trained, the plan at the end, the seconds used and the re-plans recorded."""
    config = _auto("unused", epochs=planned, most=most, minutes=minutes)
    if not replan:
        config.preset["overridden"] = ["epochs"]
    state = SimpleNamespace(should_stop=False, train_seconds=0.0)
    trainer = SimpleNamespace(config=config, state=state,
                              change_epochs=lambda epochs: setattr(config, "epochs", epochs))
    saved: list[dict] = []
    replanner = EpochReplanner(lambda epochs, note: saved.append(note))
    epoch = 0
    while epoch < config.epochs and not state.should_stop:
        epoch += 1
        seconds = epoch_seconds(epoch)
        state.train_seconds += seconds
        if epoch < config.epochs and state.train_seconds + seconds > minutes * 60:     # Trainer._check_time_limit
            state.should_stop = True
        replanner.on_epoch(trainer, epoch=epoch, seconds=seconds)
    return epoch, config.epochs, state.train_seconds, saved


def test_a_machine_at_a_steady_speed_is_re_planned_once():
    # the probe planned 10 epochs of 2 s for a 60-s budget; the epochs keep taking 2 s. A band relative to the
    # time left re-planned again and again as the time left shrank (24-28 times in a 5-minute benchmark run)
    done, planned, used, notes = _simulate(lambda e: 2.0, planned=10)
    assert len(notes) == 1 and notes[0]["after_epoch"] == 2
    assert done == planned == 28 and 0.9 * 60 <= used <= 60


def test_a_machine_that_speeds_up_later_gets_more_epochs_again():
    # the probe planned 6 epochs of a 60-s budget; epoch 1 (warm-up) is slow, the machine doubles speed after epoch 3
    done, planned, used, notes = _simulate(lambda e: 10.0 if e == 1 else 4.0 if e <= 3 else 2.0, planned=6)
    assert len(notes) >= 2 and notes[0]["after_epoch"] == 2            # once from the probe, again after speeding up
    assert [n["to_epochs"] for n in notes] == sorted(n["to_epochs"] for n in notes)
    assert done == planned > 6 and used >= 0.8 * 60                    # the run ended on its plan, budget used


def test_a_machine_that_slows_down_gets_fewer_epochs_so_the_schedule_still_ends():
    # 25 epochs of 2 s planned for 60 s; the machine halves its speed after epoch 5
    done, planned, used, notes = _simulate(lambda e: 2.0 if e <= 5 else 4.0, planned=25)
    assert notes and notes[-1]["to_epochs"] < 25
    assert done == planned and used <= 60             # ended on the (shortened) plan, not cut off by the limit
    done, planned, _, notes = _simulate(lambda e: 2.0 if e <= 5 else 4.0, planned=25, replan=False)
    assert not notes and done < planned == 25         # without re-planning the limit cuts the schedule short


class _SlowHandler:
    """An EPOCH_END handler that takes 0.3 s, as saving a large checkpoint does."""

    def attach(self, events) -> None:
        events.on(Event.EPOCH_END, lambda **_: time.sleep(0.3))


def test_an_epochs_time_includes_what_the_handlers_did(tiny_classification):
    # the time limit and the re-plan count the run's wall clock: an epoch's time includes the previous epoch's
    # handlers (checkpoints, previews), or a run of short epochs plans more than it has time for
    config = _auto(tiny_classification, preset={}, time_limit_minutes=0.0)
    run_id = create_run(config, status="starting")
    run = execute.run_job(run_id, handlers=[_SlowHandler()])
    seconds = [m["value"] for m in store.get_metrics(run_id) if m["name"] == "epoch_seconds"]
    assert run["status"] == "done" and len(seconds) == 3
    assert all(s >= 0.3 for s in seconds[1:])               # epochs 2 and 3 include epoch 1's and 2's handler
    assert run["train_seconds"] >= 0.6


def test_the_cap_is_the_assignments_when_auto_was_capped(tiny_classification):
    run = execute.run_job(create_run(_auto(tiny_classification, most=4), status="starting"))
    assert run["epoch"] == 4 and run["config"]["preset"]["replanned"]["to_epochs"] == 4
    assert not math.isnan(run["best_value"])


def test_the_stored_count_of_re_plans_carries_on_across_processes(tiny_classification):
    """The count lives in the store, not in the process: a resumed run's next re-plan is number 2, not 1 again."""
    run_id = create_run(_auto(tiny_classification), status="starting")
    store.replan_epochs(run_id, 5, {"after_epoch": 2, "epoch_seconds": 1.0, "from_epochs": 3, "to_epochs": 5})
    # a new process (a resume) has a fresh EpochReplanner: its note knows nothing of the first re-plan
    store.replan_epochs(run_id, 6, {"after_epoch": 4, "epoch_seconds": 0.9, "from_epochs": 5, "to_epochs": 6})
    note = store.get_run(run_id)["config"]["preset"]["replanned"]
    assert (note["times"], note["first_epochs"], note["from_epochs"], note["to_epochs"]) == (2, 3, 5, 6)
