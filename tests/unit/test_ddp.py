"""One run on several devices (RunConfig.devices, engine.training.distributed): on the CPU, N gloo processes take
the steps one process takes with the same batch size; the store, checkpoints, resume and the CLI's JSON are those
of a single-device run; refused settings say why."""
from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys

import pytest
import torch

from engine.config import RunConfig
from engine.errors import UserError
from engine.runs import execute, store
from engine.runs.paths import run_dir
from engine.runs.submit import create_run
from engine.training import distributed
from engine.training.events import Event
from engine.training.stops import RunCancelled
from engine.training.trainer import Trainer

# LeNet-5 has no BatchNorm and no dropout: 2 ranks of 4 images compute the gradient of one batch of 8 exactly, up
# to float32 summation order. Measured: identical to 6 decimals. A process on batches of 4 (what each rank sees
# alone) differs by 0.01-0.2 per epoch, far outside this.
EXACT = 1e-4
# U-Net has BatchNorm, whose batch statistics stay per rank (4 images, not 8): close to one process, not equal.
# Measured (4 epochs, lr 0.01): validation loss 0.0006-0.0034 from one process's; on batches of 4, 0.03-0.36.
BATCHNORM = 0.02


def _config(dataset_id: str, **overrides) -> RunConfig:
    base = {"dataset_id": dataset_id, "arch": "lenet5", "epochs": 3, "batch_size": 8, "image_size": 32, "lr": 3e-3,
            "preview_samples": 2}
    return RunConfig(**{**base, **overrides})


def _train(config: RunConfig, handlers=()) -> str:
    run_id = create_run(config, status="running")
    run = execute.run_job(run_id, handlers=handlers)
    assert run["status"] in ("done", "cancelled"), run["message"]
    return run_id


def _val(run_id: str, name: str = "loss") -> list[tuple[int, float]]:
    return [(r["epoch"], r["value"]) for r in store.get_metrics(run_id) if r["split"] == "val" and r["name"] == name]


def _values(history: list[tuple[int, float]]) -> list[float]:
    return [v for _, v in history]


def _ranks_left() -> list:
    return [p for p in multiprocessing.active_children() if p.name.startswith("lightbox-rank")]


@pytest.mark.slow
def test_two_processes_take_the_steps_of_one_with_the_same_batch(tiny_classification):
    one = _val(_train(_config(tiny_classification, devices=1)))
    two_id = _train(_config(tiny_classification, devices=2))
    two = _val(two_id)
    alone = _val(_train(_config(tiny_classification, devices=1, batch_size=4)))     # a rank's share, unaveraged
    assert [e for e, _ in two] == [1, 2, 3]
    assert _values(two) == pytest.approx(_values(one), abs=EXACT)
    assert max(abs(a - b) for a, b in zip(_values(alone), _values(one))) > 10 * EXACT   # the check can tell
    run = store.get_run(two_id)
    assert run["best_metric"] == "accuracy" and run["test"] is not None and len(run["best"]["confusion"]) == 2
    steps = [r["step"] for r in store.get_metrics(two_id) if r["split"] == "train" and r["name"] == "loss"]
    assert steps == list(range(1, len(steps) + 1))          # one loss row per step, written by rank 0 alone
    assert sorted(p.name for p in (run_dir(two_id) / "samples").glob("*.png")) == [
        "epoch_001.png", "epoch_002.png", "epoch_003.png"]
    assert _ranks_left() == []


@pytest.mark.slow
def test_a_batchnorm_model_on_two_processes_stays_close_to_one(tiny_segmentation):
    seg = {"arch": "unet", "model_options": {"depth": 2, "base": 8}, "epochs": 4, "lr": 1e-2}
    one = _val(_train(_config(tiny_segmentation, devices=1, **seg)))
    two = _val(_train(_config(tiny_segmentation, devices=2, **seg)))
    alone = _val(_train(_config(tiny_segmentation, devices=1, batch_size=4, **seg)))
    assert [e for e, _ in two] == [1, 2, 3, 4]
    assert _values(two) == pytest.approx(_values(one), abs=BATCHNORM)
    assert max(abs(a - b) for a, b in zip(_values(alone), _values(one))) > BATCHNORM


@pytest.mark.slow
def test_a_run_on_two_processes_resumes_without_repeating_epochs_and_loads_on_one(tiny_classification, tmp_path):
    class CancelAfterTwo:
        def attach(self, events):
            events.on(Event.EPOCH_END, self.maybe_stop)

        def maybe_stop(self, epoch, **_):
            if epoch == 2:
                raise RunCancelled()

    straight = _val(_train(_config(tiny_classification, epochs=4)))
    run_id = _train(_config(tiny_classification, epochs=4, devices=2), handlers=[CancelAfterTwo()])
    assert store.get_run(run_id)["status"] == "cancelled" and [e for e, _ in _val(run_id)] == [1, 2]
    assert _ranks_left() == []                  # rank 1 was told to leave, not left waiting
    store.set_status(run_id, "running")
    assert execute.run_job(run_id, resume=True)["status"] == "done"
    resumed = _val(run_id)
    assert [e for e, _ in resumed] == [1, 2, 3, 4]
    assert _values(resumed) == pytest.approx(_values(straight), abs=EXACT)
    last = torch.load(run_dir(run_id) / "last.pt", weights_only=True)
    assert not any(key.startswith("module.") for key in last["model"])
    single = Trainer(_config(tiny_classification, epochs=4), tmp_path / "single")    # one device, same weights
    assert single.restore(run_dir(run_id) / "last.pt") == 4


@pytest.mark.slow
def test_a_cancel_during_an_epoch_reaches_every_rank(tiny_classification):
    class CancelAtStepThree:
        def attach(self, events):
            events.on(Event.STEP_END, self.maybe_stop)

        def maybe_stop(self, step, **_):
            if step == 3:
                raise RunCancelled()

    run_id = _train(_config(tiny_classification, devices=2), handlers=[CancelAtStepThree()])
    assert store.get_run(run_id)["status"] == "cancelled"
    assert [e for e, _ in _val(run_id)] == [1]
    assert _ranks_left() == []


@pytest.mark.slow
def test_train_devices_2_returns_the_json_of_a_single_device_run(tiny_classification, lightbox_env):
    def train(devices: int) -> dict:
        env = {**os.environ, "LIGHTBOX_HOME": str(lightbox_env)}
        proc = subprocess.run([sys.executable, "-m", "engine", "train", "--dataset", tiny_classification, "--arch",
                               "lenet5", "--epochs", "1", "--image-size", "32", "--batch-size", "8", "--devices",
                               str(devices), "--json", "--quiet"], capture_output=True, text=True, env=env,
                              timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    one, two = train(1), train(2)
    assert two["status"] == "done" and sorted(two) == sorted(one)
    assert sorted(two["best"]) == sorted(one["best"])


def test_a_batch_too_small_for_the_devices_is_refused_saying_why():
    config = RunConfig(dataset_id="x", task="classification", batch_size=2, devices=2)
    with pytest.raises(UserError, match="Batch size 2 is too small for 2 devices.*at least 4"):
        config.validate()
    RunConfig(dataset_id="x", task="classification", batch_size=4, devices=2).validate()


def test_more_gpus_than_the_machine_has_is_refused_before_any_process_starts(tiny_classification, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UserError, match="asks for 3 GPUs and 2 are available to it here; set Devices to at most 2"):
        distributed.check_devices(RunConfig(device="cuda", devices=3))
    run_id = create_run(_config(tiny_classification, device="cuda", devices=3), status="running")
    run = execute.run_job(run_id)
    assert run["status"] == "failed" and "asks for 3 GPUs and 2 are available" in run["message"]
    assert _ranks_left() == []
