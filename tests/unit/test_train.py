"""Trainer: a real tiny training, resume equivalence, NaN stop, schedules, cache-only epochs."""
from __future__ import annotations

import pytest
import torch

from engine.config import RunConfig
from engine.runs import execute, store
from engine.runs.paths import run_dir
from engine.runs.submit import create_run
from engine.training.events import Event
from engine.training.stops import RunCancelled
from engine.training.trainer import build_scheduler


def _config(dataset_id, **overrides) -> RunConfig:
    base = dict(dataset_id=dataset_id, arch="unet", epochs=2, batch_size=8, image_size=32, lr=3e-3,
                preview_samples=2, model_options={"depth": 2, "base": 8})
    base.update(overrides)
    return RunConfig(**base)


def _val_history(run_id: str, name: str) -> list[tuple[int, float]]:
    return [(r["epoch"], r["value"]) for r in store.get_metrics(run_id) if r["split"] == "val" and r["name"] == name]


def test_segmentation_run_writes_everything(tiny_segmentation):
    run_id = create_run(_config(tiny_segmentation), status="running")
    run = execute.run_job(run_id)
    assert run["status"] == "done", run["message"]
    folder = run_dir(run_id)
    assert (folder / "best.pt").exists() and (folder / "last.pt").exists()
    assert sorted(p.name for p in (folder / "samples").glob("*.png")) == ["epoch_001.png", "epoch_002.png"]
    assert [e for e, _ in _val_history(run_id, "dice")] == [1, 2]
    assert run["best_metric"] == "dice" and 0.0 <= run["best_value"] <= 1.0
    assert run["test"] is not None and "dice" in run["test"]
    steps = [r for r in store.get_metrics(run_id) if r["name"] == "loss" and r["split"] == "train"]
    assert [r["step"] for r in steps] == list(range(1, len(steps) + 1))    # one loss row per optimizer step
    ckpt = torch.load(folder / "best.pt", weights_only=True)
    assert ckpt["epoch"] == run["best_epoch"] and ckpt["dataset"]["num_classes"] == 2


def test_classification_run(tiny_classification):
    run_id = create_run(_config(tiny_classification, arch="lenet5", epochs=2, model_options={}), status="running")
    run = execute.run_job(run_id)
    assert run["status"] == "done", run["message"]
    assert run["best_metric"] == "accuracy"
    assert len(run["best"]["confusion"]) == 2


def test_resume_continues_with_identical_history(tiny_segmentation):
    """Stopping after epoch 2 and resuming must give the same 4-epoch history as an uninterrupted run."""
    straight = create_run(_config(tiny_segmentation, epochs=4), status="running")
    execute.run_job(straight)

    class StopAfterTwo:
        def attach(self, events):
            events.on(Event.EPOCH_END, self.maybe_stop)

        def maybe_stop(self, epoch, **_):
            if epoch == 2:
                raise RunCancelled()

    interrupted = create_run(_config(tiny_segmentation, epochs=4), status="running")
    assert execute.run_job(interrupted, handlers=[StopAfterTwo()])["status"] == "cancelled"
    assert [e for e, _ in _val_history(interrupted, "dice")] == [1, 2]
    store.set_status(interrupted, "running")
    assert execute.run_job(interrupted, resume=True)["status"] == "done"
    a, b = _val_history(straight, "dice"), _val_history(interrupted, "dice")
    assert [e for e, _ in b] == [1, 2, 3, 4]
    assert [v for _, v in a] == pytest.approx([v for _, v in b], abs=1e-4)


def test_a_time_limit_stops_after_the_last_epoch_that_fits_and_counts_over_a_resume(tiny_segmentation,
                                                                                    monkeypatch):
    """Each epoch 'takes' 50 s on a fake clock: with a 2-minute limit, epochs 1-2 run (100 s) and a third would
    pass 120 s, so the run ends done after epoch 2 saying why; a resume counts the time already spent."""
    import engine.training.trainer as trainer_module

    class Clock:
        now = 0.0

        @classmethod
        def perf_counter(cls) -> float:
            cls.now += 50.0             # called at an epoch's start and end: 50 s an epoch
            return cls.now

    monkeypatch.setattr(trainer_module, "time", Clock)
    run_id = create_run(_config(tiny_segmentation, epochs=10, time_limit_minutes=2.0), status="running")
    run = execute.run_job(run_id)
    assert run["status"] == "done" and [e for e, _ in _val_history(run_id, "dice")] == [1, 2]
    assert run["message"] == ("Time limit: stopped after epoch 2 of 10 at 1.7 of 2 minutes (another epoch takes "
                              "about 50 s); the best epoch is kept.")
    assert torch.load(run_dir(run_id) / "last.pt", weights_only=True)["train_seconds"] == pytest.approx(100.0)


    class StopAfterOne:
        def attach(self, events):
            events.on(Event.EPOCH_END, lambda epoch, **_: (_ for _ in ()).throw(RunCancelled()) if epoch == 1 else None)

    resumed = create_run(_config(tiny_segmentation, epochs=10, time_limit_minutes=2.0), status="running")
    assert execute.run_job(resumed, handlers=[StopAfterOne()])["status"] == "cancelled"
    store.set_status(resumed, "running")
    assert execute.run_job(resumed, resume=True)["status"] == "done"
    assert [e for e, _ in _val_history(resumed, "dice")] == [1, 2]      # 50 s before the resume still count
    unlimited = create_run(_config(tiny_segmentation, epochs=3), status="running")
    assert [e for e, _ in _val_history(unlimited, "dice")] == [] and execute.run_job(unlimited)["status"] == "done"
    assert [e for e, _ in _val_history(unlimited, "dice")] == [1, 2, 3]                # 0 = no limit


def test_nan_loss_stops_with_a_message(tiny_segmentation):
    class Poison:
        def attach(self, events):
            events.on(Event.FIT_START, self.poison)

        def poison(self, trainer):
            real = trainer.loss_fn
            trainer.loss_fn = lambda logits, target: real(logits, target) * float("nan")

    run_id = create_run(_config(tiny_segmentation), status="running")
    run = execute.run_job(run_id, handlers=[Poison()])
    assert run["status"] == "failed"
    assert "NaN" in run["message"] and "lower the learning rate" in run["message"]


def test_epochs_read_only_the_cache(tiny_segmentation, monkeypatch):
    from engine.training.trainer import Trainer
    trainer = Trainer(_config(tiny_segmentation, epochs=1), run_dir("cache-check"))

    def forbidden(*args, **kwargs):
        raise AssertionError("an epoch touched an image decoder")
    import PIL.Image
    import pydicom
    monkeypatch.setattr(PIL.Image, "open", forbidden)
    monkeypatch.setattr(pydicom, "dcmread", forbidden)
    trainer.fit()
    assert trainer.state.epoch == 1


def test_wrong_task_architecture_is_refused(tiny_classification):
    from engine.errors import UserError
    with pytest.raises(UserError, match="segmentation model"):
        create_run(_config(tiny_classification, arch="unet", model_options={}))


@pytest.mark.parametrize("schedule,step,expected", [
    ("constant", 50, 1.0),
    ("exponential", 100, 0.5),          # rate 0.5 per 100 steps
    ("step", 30, 0.1),                  # 10 steps/epoch, drop every 3 epochs
    ("cosine", 100, 0.0),
])
def test_schedules(schedule, step, expected):
    config = RunConfig(dataset_id="x", arch="unet", task="segmentation", epochs=10, lr=1.0, schedule=schedule,
                       decay_rate=0.5, decay_steps=100, step_size=3, gamma=0.1)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(config, optimizer, steps_per_epoch=10)
    for _ in range(step):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, abs=1e-6)


def test_mixed_precision_path_trains_and_checkpoints(tiny_segmentation, monkeypatch):
    """The autocast branch (CUDA only in production; no GPU in CI) run on the CPU with bfloat16: the forward,
    the float32 loss inside autocast, the scaler (disabled for bf16), evaluation and checkpoints all work."""
    from engine.training.trainer import Trainer
    monkeypatch.setattr(Trainer, "_amp_dtype", lambda self: torch.bfloat16)
    seen = []
    real_step = Trainer.step

    def step(self, images, targets):
        loss, logits = real_step(self, images, targets)
        seen.append((loss.dtype, logits.dtype))
        return loss, logits
    monkeypatch.setattr(Trainer, "step", step)
    run = execute.run_job(create_run(_config(tiny_segmentation, preview_samples=0), status="running"))
    assert run["status"] == "done", run["message"]
    assert seen and all(loss == torch.float32 and logits == torch.bfloat16 for loss, logits in seen)
    assert run["best_value"] == run["best_value"] and run["test"]["dice"] >= 0.0      # no NaN
