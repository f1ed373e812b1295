"""Queue and worker with real processes: exactly-once execution, kill -9 recovery, cancel latency."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from sqlalchemy import select
from waiting import wait_for

from engine.config import RunConfig
from engine.errors import UserError
from engine.runs import lifecycle, queue, store, submit

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def _config(dataset_id, **overrides) -> RunConfig:
    base = dict(dataset_id=dataset_id, arch="lenet5", epochs=1, batch_size=8, image_size=32, preview_samples=0)
    base.update(overrides)
    return RunConfig(**base)


def _worker(*args: str, env_extra: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "engine", "worker", "--poll", "0.2", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait(predicate, timeout: float, what: str):
    return wait_for(predicate, timeout, what, poll=0.2)


def test_claim_is_exclusive(tiny_classification):
    run_ids = [submit.submit(_config(tiny_classification)) for _ in range(5)]
    claims = [queue.claim_next_job(f"w{i}") for i in range(7)]
    taken = [c.run_id for c in claims if c]
    assert sorted(taken) == sorted(run_ids) and claims[-1] is None and claims[-2] is None
    assert {store.get_run(r)["status"] for r in run_ids} == {"starting"}      # "running" from the first step


def test_cancel_queued_run_never_starts(tiny_classification):
    run_id = submit.submit(_config(tiny_classification))
    assert lifecycle.cancel(run_id) == "cancelled"
    assert queue.claim_next_job("w") is None
    assert store.get_run(run_id)["status"] == "cancelled"


@pytest.mark.timeout(1500)
def test_two_workers_run_twenty_jobs_exactly_once(tiny_classification):
    # 20 child processes that each import torch: ~2 min on a quiet 2-core machine, 5-7 min when it is shared
    # (seen at load 4-14); the limits only catch a hang, the test is about every run once
    run_ids = [submit.submit(_config(tiny_classification, seed=i)) for i in range(20)]
    workers = [_worker("--until-idle"), _worker("--until-idle")]
    for w in workers:
        _, err = w.communicate(timeout=900)
        assert w.returncode == 0, err.decode()[-2000:]
    runs = {r: store.get_run(r) for r in run_ids}
    assert {r["status"] for r in runs.values()} == {"done"}, {r: v["message"] for r, v in runs.items()}
    assert all(r["attempts"] == 1 for r in runs.values())
    claimed = Counter(r["worker"] for r in runs.values())
    assert len(claimed) == 2, "both workers should have taken jobs"
    for run_id in run_ids:      # each run logged its single epoch exactly once
        epochs = [m["epoch"] for m in store.get_metrics(run_id) if m["split"] == "val" and m["name"] == "accuracy"]
        assert epochs == [1]


def test_kill_9_marks_interrupted_and_resume_keeps_history(tiny_segmentation):
    config = _config(tiny_segmentation, arch="unet", epochs=6, batch_size=4, image_size=64,
                     model_options={"depth": 3, "base": 16})
    run_id = submit.submit(config)
    env = {"LIGHTBOX_STALE_SECONDS": "3"}
    worker = _worker(env_extra=env)
    _wait(lambda: (store.get_run(run_id)["epoch"] or 0) >= 2, 300, "two finished epochs")
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    os.environ["LIGHTBOX_STALE_SECONDS"] = "3"
    try:
        _wait(lambda: queue.mark_stale_runs() or store.get_run(run_id)["status"] == "interrupted", 30,
              "the run to be marked interrupted")
    finally:
        del os.environ["LIGHTBOX_STALE_SECONDS"]
    run = store.get_run(run_id)
    assert run["status"] == "interrupted" and "Resume" in run["message"]
    # A restarted worker must not pick the interrupted run up on its own.
    assert queue.claim_next_job("restarted") is None
    assert lifecycle.resume(run_id) == "queued"
    second = _worker("--until-idle")
    _, err = second.communicate(timeout=400)
    assert second.returncode == 0, err.decode()[-2000:]
    run = store.get_run(run_id)
    assert run["status"] == "done", run["message"]
    epochs = [m["epoch"] for m in store.get_metrics(run_id) if m["split"] == "val" and m["name"] == "dice"]
    assert epochs == [1, 2, 3, 4, 5, 6]
    steps = [m["step"] for m in store.get_metrics(run_id) if m["split"] == "train" and m["name"] == "loss"]
    assert steps == sorted(set(steps)) and steps == list(range(1, len(steps) + 1))


def test_cancel_running_run_within_five_seconds(tiny_segmentation):
    config = _config(tiny_segmentation, arch="unet", epochs=50, batch_size=4, image_size=64)
    run_id = submit.submit(config)
    worker = _worker()
    try:
        _wait(lambda: any(m["name"] == "loss" for m in store.get_metrics(run_id)), 120, "training steps")
        started = time.monotonic()
        assert lifecycle.cancel(run_id) == "cancelling"
        _wait(lambda: store.get_run(run_id)["status"] == "cancelled", 5, "cancellation")
        assert time.monotonic() - started < 5
        assert "resume" in store.get_run(run_id)["message"].lower()
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)


def test_cancel_while_starting_stops_at_once(tiny_segmentation):
    """A claimed run whose process is still importing torch and loading data is 'starting'; a cancel then ends
    it at once (the status changes in the same call and the worker ends the process), never after its first step."""
    run_id = submit.submit(_config(tiny_segmentation, arch="unet", epochs=50, batch_size=4, image_size=64))
    worker = _worker("--until-idle")
    try:
        _wait(lambda: store.get_run(run_id)["status"] == "starting", 60, "the run to be claimed")
        started = time.monotonic()
        assert lifecycle.cancel(run_id) == "cancelled"
        assert store.get_run(run_id)["status"] == "cancelled"
        assert "starting" in store.get_run(run_id)["message"]
        _, err = worker.communicate(timeout=60)     # --until-idle: exits once its only child has ended
        assert worker.returncode == 0, err.decode()[-2000:]
        assert time.monotonic() - started < 10
    finally:
        if worker.poll() is None:
            worker.kill()
    run = store.get_run(run_id)
    assert run["status"] == "cancelled" and run["epoch"] == 0
    assert [m for m in store.get_metrics(run_id) if m["name"] == "loss"] == []      # it never trained a step
    assert lifecycle.resume(run_id) == "queued"                                    # and can start again


def test_delete_refuses_active_runs_and_removes_everything_of_a_finished_one(tiny_classification):
    from engine import workspace as lbx_workspace
    run_id = submit.submit(RunConfig(dataset_id=tiny_classification, arch="lenet5", epochs=1, image_size=32))
    with pytest.raises(UserError, match="stop it before deleting"):
        lifecycle.delete(run_id)
    assert lifecycle.cancel(run_id) == "cancelled"
    (lbx_workspace.runs_dir() / run_id).mkdir(parents=True, exist_ok=True)
    (lbx_workspace.runs_dir() / run_id / "last.pt").write_bytes(b"x")
    store.log_metrics(run_id, [(1, 1, "train", "loss", 0.5)])
    assert lifecycle.delete(run_id) == "deleted"
    assert store.get_run(run_id) is None and store.get_metrics(run_id) == []
    assert not (lbx_workspace.runs_dir() / run_id).exists()
    with store.db().connect() as conn:
        assert conn.execute(select(store.jobs).where(store.jobs.c.run_id == run_id)).all() == []
    with pytest.raises(UserError, match="no run"):
        lifecycle.delete(run_id)


def test_delete_dataset_refuses_while_a_run_uses_it_and_never_leaves_the_workspace(tiny_classification):
    from engine import workspace as lbx_workspace
    from engine.data.dataset import list_datasets
    run_id = submit.submit(RunConfig(dataset_id=tiny_classification, arch="lenet5", epochs=1, image_size=32))
    with pytest.raises(UserError, match="queued or running use this dataset"):
        lifecycle.delete_dataset(tiny_classification)
    for evil in ("..", "../datasets", "/tmp", "a/../.."):
        with pytest.raises(UserError):
            lifecycle.delete_dataset(evil)
    assert lbx_workspace.datasets_dir().exists() and len(list_datasets()) == 1
    lifecycle.cancel(run_id)
    assert lifecycle.delete_dataset(tiny_classification) == "deleted"
    assert list_datasets() == [] and store.get_run(run_id)["status"] == "cancelled"      # runs keep their rows
    with pytest.raises(UserError, match="does not exist"):
        lifecycle.delete_dataset(tiny_classification)
