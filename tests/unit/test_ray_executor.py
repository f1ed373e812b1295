"""`engine worker --executor ray`: runs claimed from the store execute as Ray tasks on a one-node Ray cluster
(`ray start --head` on loopback, 2 CPUs, one per module): each run once in fair order through `--address`,
cancel of a queued and of a pending run, a lost task's process resumed from its checkpoint, the bounded retries,
the resources a run asks for, and the one-line refusal when Ray is missing.

Tests that need Ray skip without it (`make test` on the lean install); `make test-ray` and .ci/run install it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray_cluster
from sqlalchemy import select
from waiting import wait_for

from engine.cli.main import main
from engine.config import RunConfig
from engine.runs import lifecycle, queue, ray_executor, ray_task, store, submit
from engine.runs.paths import run_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_head():
    """A one-node Ray cluster on loopback with 2 CPUs (ray_cluster.ray_head), for this module's tests."""
    with ray_cluster.ray_head(num_cpus=2) as address:
        yield address


def _config(dataset_id: str, **overrides) -> RunConfig:
    base = {"dataset_id": dataset_id, "arch": "lenet5", "epochs": 1, "batch_size": 8, "image_size": 32,
            "preview_samples": 0}
    return RunConfig(**(base | overrides))


def _submit(dataset_id: str, owner: str | None, **overrides) -> str:
    run_id = submit.submit(_config(dataset_id, **overrides))
    store.update_run(run_id, owner=owner)
    return run_id


def _claim_order() -> list[str]:
    query = (select(store.jobs.c.run_id).where(store.jobs.c.claimed_at.is_not(None))
             .order_by(store.jobs.c.claimed_at, store.jobs.c.id))
    with store.db().connect() as conn:
        return [r.run_id for r in conn.execute(query)]


def _jobs(run_id: str) -> list:
    with store.db().connect() as conn:
        return conn.execute(select(store.jobs).where(store.jobs.c.run_id == run_id).order_by(store.jobs.c.id)).all()


def _wait(predicate, timeout: float, what: str):
    return wait_for(predicate, timeout, what, poll=0.05)


def _worker_thread(**kwargs) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def go():
        try:
            result["done"] = ray_executor.run_ray_worker(poll=0.2, until_idle=True, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            result["error"] = exc
    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, result


def test_two_users_runs_train_once_each_on_ray_in_fair_order(ray_head, tiny_classification):
    # User a already has a run going, so b's run (queued after a's) is claimed first: the fair order of the store.
    busy = _submit(tiny_classification, "a")
    assert queue.claim_next_job("elsewhere").run_id == busy
    store.set_status(busy, "running", only_if=store.STARTED)
    store.update_run(busy, heartbeat_at=store.now())
    first_a, then_b = _submit(tiny_classification, "a", seed=1), _submit(tiny_classification, "b", seed=2)

    done = subprocess.run([sys.executable, "-m", "engine", "worker", "--json", "--executor", "ray", "--address",
                           ray_head, "--until-idle", "--poll", "0.2", "--slots", "2"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert '"executor": "ray"' in done.stdout
    assert _claim_order() == [busy, then_b, first_a]
    for run_id in (first_a, then_b):
        run = store.get_run(run_id)
        assert run["status"] == "done" and run["attempts"] == 1, run["message"]
        assert [m["epoch"] for m in store.get_metrics(run_id) if (m["split"], m["name"]) == ("val", "accuracy")] == [1]
        assert (run_dir(run_id) / "last.pt").exists()
        assert [j.status for j in _jobs(run_id)] == ["finished"]
    with store.db().connect() as conn:
        worker = conn.execute(select(store.workers)).one()
    assert worker.device.startswith("Ray:") and worker.stopped


SUBMITTER = """import sys
from engine.config import RunConfig
from engine.runs import submit
for seed in range(3):
    print(submit.submit(RunConfig(dataset_id=sys.argv[1], arch="lenet5", epochs=1, batch_size=8, image_size=32,
                                  preview_samples=0, seed=seed, name=sys.argv[2])), flush=True)
"""


def test_six_runs_from_two_submitting_processes_train_once_each_on_ray(ray_head, tiny_classification):
    """Two processes queue three runs each at the same time while a Ray worker drains the queue: six runs, each
    claimed once and trained once (one epoch each, one finished job each), none lost or doubled."""
    worker = subprocess.Popen([sys.executable, "-m", "engine", "worker", "--json", "--executor", "ray",
                               "--address", ray_head, "--poll", "0.2", "--slots", "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        submitters = [subprocess.Popen([sys.executable, "-c", SUBMITTER, tiny_classification, f"p{i}"],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (1, 2)]
        made = []
        for proc in submitters:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err[-2000:]
            made += out.split()
        assert len(made) == len(set(made)) == 6
        _wait(lambda: all(store.get_run(r)["status"] in ("done", "failed") for r in made), 240, "six runs to end")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=60)
    for run_id in made:
        run = store.get_run(run_id)
        assert run["status"] == "done" and run["attempts"] == 1, run["message"]
        assert [m["epoch"] for m in store.get_metrics(run_id) if (m["split"], m["name"]) == ("val", "accuracy")] == [1]
        assert [j.status for j in _jobs(run_id)] == ["finished"]
    assert sorted(_claim_order()) == sorted(made)                     # each claimed exactly once
    assert {store.get_run(r)["name"] for r in made} == {"p1", "p2"}


def test_cancelled_queued_and_pending_runs_never_train(ray_head, tiny_classification, monkeypatch):
    queued = _submit(tiny_classification, None)
    assert lifecycle.cancel(queued) == "cancelled"
    # The other run's task asks for a resource no node has: it stays pending in Ray, as behind a busy GPU.
    monkeypatch.setattr(ray_executor, "run_resources", lambda config, cluster: {"num_cpus": 1,
                                                                               "resources": {"no_such_node": 1}})
    pending = _submit(tiny_classification, None)
    thread, result = _worker_thread(slots=1)
    _wait(lambda: store.get_run(pending)["status"] == "starting", 60, "the run to be claimed")
    time.sleep(1.0)                                     # a few worker loops: its heartbeat keeps it starting
    queue.mark_stale_runs()
    assert store.get_run(pending)["status"] == "starting"
    started = time.monotonic()
    assert lifecycle.cancel(pending) == "cancelled"
    thread.join(timeout=30)                             # --until-idle: ends once the cancelled task is gone
    assert not thread.is_alive() and "error" not in result, result
    assert time.monotonic() - started < 10
    for run_id in (queued, pending):
        run = store.get_run(run_id)
        assert run["status"] == "cancelled" and run["attempts"] == 0
        assert store.get_metrics(run_id) == []
    assert [j.status for j in _jobs(queued)] == ["finished"] and _jobs(queued)[0].claimed_at is None
    assert [j.status for j in _jobs(pending)] == ["finished"]


def _run_job_process_of(run_id: str) -> tuple[int, int] | None:
    """(pid, parent pid) of the `engine run-job RUN_ID` process, found through /proc."""
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if b"run-job" in argv and run_id.encode() in argv:
                stat = (proc / "stat").read_text()
                return int(proc.name), int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return None


def test_a_killed_task_process_is_resumed_from_its_checkpoint(ray_head, tiny_classification):
    run_id = _submit(tiny_classification, None, epochs=30)
    thread, result = _worker_thread(slots=1)
    _wait(lambda: (store.get_run(run_id)["epoch"] or 0) >= 1, 120, "a finished epoch")
    child, ray_worker = _wait(lambda: _run_job_process_of(run_id), 10, "the run's process")
    os.kill(ray_worker, signal.SIGKILL)                 # the task's Ray worker dies, as with its node
    assert store.get_run(run_id)["status"] == "running"
    thread.join(timeout=180)
    assert not thread.is_alive() and "error" not in result, result
    run = store.get_run(run_id)
    assert run["status"] == "done", run["message"]
    assert run["attempts"] == 2
    assert [j.resume for j in _jobs(run_id)] == [False, True]           # queued again, to resume
    assert not Path(f"/proc/{child}").exists()                          # its first process died with its task
    epochs = [m["epoch"] for m in store.get_metrics(run_id) if (m["split"], m["name"]) == ("val", "accuracy")]
    assert epochs == list(range(1, 31))                                 # resumed, no epoch twice


def test_lost_node_retries_are_bounded(lightbox_env):
    run_id = store.insert_run({"dataset_id": "none", "arch": "lenet5", "task": "classification"})
    worker = ray_executor.RayWorker.__new__(ray_executor.RayWorker)     # node_lost needs only the store
    worker.lost = {}
    messages = []
    queue.enqueue(run_id, resume=False)
    for attempt in range(ray_executor.MAX_LOST_RETRIES + 1):
        claim = queue.claim_next_job("w")           # the retry's job, queued by node_lost, resumes
        assert claim is not None and claim.resume == (attempt > 0)
        queue.finish_job(claim.job_id)
        worker.node_lost(claim, "test")
        messages.append(store.get_run(run_id)["message"])
    assert store.get_run(run_id)["status"] == "interrupted"
    assert "automatic retry 1 of 2" in messages[0] and "lost 3 times" in messages[-1]
    assert "press Resume" in messages[-1]
    assert queue.claim_next_job("w") is None


def test_a_run_asks_for_a_gpu_only_where_it_trains_on_one():
    cpu_cluster, gpu_cluster = {"CPU": 8.0}, {"CPU": 16.0, "GPU": 4.0}
    assert ray_executor.run_resources({"device": "auto"}, cpu_cluster) == {"num_cpus": 1}
    assert ray_executor.run_resources({"device": "auto"}, gpu_cluster) == {"num_cpus": 1, "num_gpus": 1}
    assert ray_executor.run_resources({"device": "cuda"}, gpu_cluster) == {"num_cpus": 1, "num_gpus": 1}
    assert ray_executor.run_resources({"device": "cpu"}, gpu_cluster) == {"num_cpus": 1}
    assert ray_executor.run_resources({"device": "cuda", "devices": 2}, gpu_cluster)["num_gpus"] == 2
    assert ray_executor.default_slots(gpu_cluster, 2) == 4 and ray_executor.default_slots(cpu_cluster, 3) == 3


def test_without_ray_the_worker_says_how_to_add_it_in_one_line(lightbox_env, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)       # `import ray` raises ImportError
    assert main(["worker", "--executor", "ray", "--until-idle"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: Ray is not installed; `make ray` (or pip install -r requirements-ray.txt) adds it."
    with store.db().connect() as conn:
        assert conn.execute(select(store.workers)).all() == []


def test_address_without_the_ray_executor_is_refused(lightbox_env, capsys):
    assert main(["worker", "--address", "auto", "--until-idle"]) == 2
    assert "--executor ray" in capsys.readouterr().err


def test_a_runs_process_on_ray_trains_with_every_core_of_its_node(lightbox_env, monkeypatch):
    """Ray pins a one-CPU task to one OpenMP thread; the run's own process must not inherit that (it trained on one
    thread of the node, while the embedded worker's children use them all)."""
    seen = {}

    class Finished:
        def __init__(self, args, env=None, **_):
            seen["env"] = env

        def wait(self):
            return 0

        def poll(self):
            return 0

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(ray_task.subprocess, "Popen", Finished)
    assert ray_task.run_job_process("1130-000000-00000000", resume=False)["exit_code"] == 0
    assert "OMP_NUM_THREADS" not in seen["env"] and seen["env"]["LIGHTBOX_HOME"] == os.environ["LIGHTBOX_HOME"]
