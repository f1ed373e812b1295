"""`engine search --executor ray`: one study's trials run as Ray tasks in parallel on a one-node Ray cluster
(`ray start --head` on loopback, 4 CPUs): a 4-trial search runs its trials at the same time, each an ordinary
done run, with Optuna still drawing different points; a stop ends the tasks' trials and their processes; a lost
task's trial is failed and run again; and the one-line refusals.

Tests that need Ray skip without it (`make test` on the lean install); `make test-ray` and .ci/run install it."""
from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import ray_cluster
from optuna.trial import TrialState
from waiting import wait_for

from engine.accounts import users
from engine.classroom import assignments
from engine.cli.main import main
from engine.errors import UserError
from engine.runs import store
from engine.search import ray_search
from engine.search import study as search

pytestmark = pytest.mark.slow

BASE = {"arch": "lenet5", "epochs": 2, "image_size": 32, "batch_size": 8, "preview_samples": 0}


@pytest.fixture(scope="module")
def ray_head():
    with ray_cluster.ray_head(num_cpus=4) as address:
        yield address


@pytest.fixture
def one_thread(monkeypatch):
    """This process's own torch stays on one thread too (a 2-core machine, 4 trials)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _study(dataset_id: str, n_trials: int, **base) -> str:
    spec = search.StudySpec(dataset_id=dataset_id, base=BASE | base, n_trials=n_trials, sampler="random",
                            pruner="none", space=search.SearchSpace(lr=(1e-3, 1e-2), batch_sizes=[8]))
    return search.create_study(spec)


def _trial_processes(name: str) -> list[int]:
    """Pids of the trial processes (`engine search --study NAME --at-most 1`) still alive."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if "--at-most" in argv and name in argv and state not in ("Z", "X"):
            pids.append(int(proc.name))
    return pids


def _wait(predicate, timeout: float, what: str):
    return wait_for(predicate, timeout, what, poll=0.1)


def _driver_thread(name: str, **kwargs) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def go():
        try:
            result["summary"] = ray_search.run_search_on_ray(name, poll=0.2, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            result["error"] = exc
    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, result


def test_four_trials_run_at_the_same_time_on_ray(ray_head, tiny_classification, one_thread):
    # 24 epochs of 24 images (a few seconds): a trial lasts longer than its process takes to start (torch's
    # import, 4 at once on 2 cores), so trials started together are seen training together.
    done = subprocess.run([sys.executable, "-m", "engine", "search", "--dataset", tiny_classification,
                           "--arch", "lenet5", "--epochs", "24", "--image-size", "32", "--batch-sizes", "8",
                           "--lr-range", "1e-3,1e-2", "--trials", "4", "--pruner", "none", "--name", "on-ray",
                           "--executor", "ray", "--address", ray_head, "--quiet", "--json"],
                          capture_output=True, text=True, timeout=400, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # --parallel left out: one trial per CPU of the cluster (4), never more than the trials (4).
    assert result["executor"] == "ray" and result["parallel"] == 4
    assert result["trials"] == 4 and result["states"]["complete"] == 4 and result["best_run_id"]
    trials = search.load_study("on-ray").get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    runs = store.list_runs(study="on-ray")
    assert len(runs) == 4
    assert {r["id"] for r in runs} == {t.user_attrs["run_id"] for t in trials}
    for run in runs:
        assert run["status"] == "done" and run["epoch"] == 24, run["message"]
    assert len({t.params["lr"] for t in trials}) == 4            # Optuna drew a different point for each
    # Each trial from Optuna's ask (its process started) to its tell (its run done): two at once at least.
    spans = [(t.datetime_start.timestamp(), t.datetime_complete.timestamp()) for t in trials]
    overlapping = [(a, b) for a, b in itertools.combinations(spans, 2) if max(a[0], b[0]) < min(a[1], b[1])]
    assert overlapping, f"no two trials ran at the same time: {spans}"
    assert not _trial_processes("on-ray")


def test_stop_ends_the_trials_running_as_ray_tasks(ray_head, tiny_classification, one_thread, capsys):
    name = _study(tiny_classification, n_trials=4, epochs=200)        # trials far longer than the test
    thread, result = _driver_thread(name, parallel=2)
    study = search.load_study(name)

    def training():
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        runs = [store.get_run(t.user_attrs["run_id"]) for t in running if t.user_attrs.get("run_id")]
        return len(runs) == 2 and all((r["epoch"] or 0) >= 1 for r in runs)
    _wait(training, 180, "two trials training at once")
    assert len(_trial_processes(name)) == 2
    assert main(["search", "--study", name, "--stop", "--json"]) == 0
    stopped = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stopped["stopped"] is True and stopped["cancelled_trials"] == [0, 1]
    thread.join(timeout=60)                       # the driver starts no trial after the stop, and ends
    assert not thread.is_alive() and "error" not in result, result
    assert result["summary"]["trials"] == 2 and result["summary"]["states"]["cancelled"] == 2
    assert {r["status"] for r in store.list_runs(study=name)} == {"cancelled"}
    assert len(store.list_runs(study=name)) == 2
    _wait(lambda: not _trial_processes(name), 15, "the trials' processes to end")


def test_a_lost_task_fails_its_trial_and_the_search_runs_it_again(ray_head, tiny_classification, one_thread,
                                                                  monkeypatch):
    monkeypatch.setenv("LIGHTBOX_STALE_SECONDS", "8")    # 4 missed heartbeats: the run is taken for dead
    name = _study(tiny_classification, n_trials=2, epochs=12)
    thread, result = _driver_thread(name, parallel=1)
    study = search.load_study(name)
    _wait(lambda: [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("run_id")
                   and (store.get_run(t.user_attrs["run_id"])["epoch"] or 0) >= 1], 180, "a trial training")
    [child] = _trial_processes(name)
    ray_worker = int((Path(f"/proc/{child}") / "stat").read_text().rsplit(")", 1)[1].split()[1])
    os.kill(ray_worker, signal.SIGKILL)           # the task's Ray worker dies, as with its node
    _wait(lambda: not _trial_processes(name), 10, "the trial's process to die with its task")
    thread.join(timeout=300)
    assert not thread.is_alive() and "error" not in result, result
    trials = sorted(search.load_study(name).get_trials(deepcopy=False), key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert store.get_run(trials[0].user_attrs["run_id"])["status"] == "interrupted"
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == 0)
    assert retry.params == trials[0].params                   # run again with the lost trial's point
    assert result["summary"]["states"]["complete"] == 2


def test_a_students_search_on_ray_stops_at_the_assignments_limit(ray_head, tiny_classification, one_thread):
    for name, role in (("alice", "student"), ("prof", "instructor")):
        users.add_user(name, role, f"{name} has a long password")
    alice, prof = users.get_actor("alice"), users.get_actor("prof")
    assignments.create_assignment(prof, tiny_classification, "Week 1", runs_per_student=2)
    spec = search.StudySpec(dataset_id=tiny_classification, base=BASE | {"epochs": 1}, n_trials=4, sampler="random",
                            pruner="none", space=search.SearchSpace(lr=(1e-3, 1e-2), batch_sizes=[8]))
    name = search.create_study(spec, actor=alice)
    result = ray_search.run_search_on_ray(name, parallel=2, actor=alice, poll=0.2)
    runs = store.list_runs(study=name)
    assert len(runs) == 2 and {r["owner"] for r in runs} == {"alice"}
    assert result["trials"] == 2 and result["states"]["complete"] == 2
    reason = "You have used all 2 runs that assignment 'Week 1' allows; hand in one of your runs."
    assert result[search.LIMIT_REACHED] == reason == search.summary(name)[search.LIMIT_REACHED]
    # Each trial process appends its summary to the search's log: the driver started no more once refused
    # (two with trials, then at most one refused per slot).
    summaries = [line for line in search.process_files(name)[0].read_text().splitlines() if line.startswith("{")]
    assert 3 <= len(summaries) <= 4


def test_a_trial_process_refused_ends_the_search_in_one_sentence(ray_head, tiny_classification):
    users.add_user("alice", "student", "alice has a long password")
    spec = search.StudySpec(dataset_id=tiny_classification, base=dict(BASE), n_trials=2, name="old sweep")
    name = search.create_study(spec, actor=users.get_actor("alice"))
    users.remove_user("alice")
    with pytest.raises(UserError) as refused:
        ray_search.run_search_on_ray(name, parallel=2, poll=0.2)
    assert str(refused.value) == (
        "A trial of search 'old sweep' on node " + socket.gethostname() + " failed: Search 'old sweep' belongs to "
        "'alice', who no longer has an account, so it runs no more trials; start a new search instead.")
    assert store.list_runs(study=name) == []


def test_without_an_address_a_search_starts_its_own_ray(tiny_classification, one_thread):
    """A local instance even where this machine names another cluster (RAY_ADDRESS, or the address file a
    `ray start` leaves behind): here a dead one, which a plain ray.init() would try and fail on."""
    pytest.importorskip("ray")
    name = _study(tiny_classification, n_trials=1, epochs=1)
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{ray_cluster.free_port()}"}
    done = subprocess.run([sys.executable, "-m", "engine", "search", "--study", name, "--executor", "ray",
                           "--quiet", "--json"], capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["parallel"] == 1 and result["states"]["complete"] == 1       # one trial left: one at once
    assert [r["status"] for r in store.list_runs(study=name)] == ["done"]


def test_ray_options_without_the_ray_executor_are_refused_in_one_line(lightbox_env, capsys):
    assert main(["search", "--study", "any", "--parallel", "2"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --parallel is for a search on Ray; add --executor ray, or "
                                               "leave it out.")


def test_without_ray_a_search_on_ray_says_how_to_add_it(tiny_classification, monkeypatch, capsys):
    name = _study(tiny_classification, n_trials=1)
    monkeypatch.setitem(sys.modules, "ray", None)       # `import ray` raises ImportError
    assert main(["search", "--study", name, "--executor", "ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: Ray is not installed; `make ray` (or pip install -r requirements-ray.txt) adds it."
    assert store.list_runs(study=name) == []


def test_parallel_defaults_to_one_trial_per_gpu_else_per_cpu():
    assert ray_search.default_parallel({"CPU": 16.0, "GPU": 4.0}, 20) == 4
    assert ray_search.default_parallel({"CPU": 16.0}, 20) == 16
    assert ray_search.default_parallel({"CPU": 16.0}, 3) == 3
    assert ray_search.default_parallel({"CPU": 2.0}, 0) == 1
