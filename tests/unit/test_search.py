"""Hyperparameter search: pruning happens, best params round-trip, two processes share one study."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from engine.config import RunConfig
from engine.runs import store
from engine.search import study as search

pytestmark = pytest.mark.postgres

BASE = {"arch": "unet", "epochs": 3, "image_size": 32, "batch_size": 8, "preview_samples": 0,
        "model_options": {"depth": 2, "base": 8}}


def _spec(dataset_id: str, **overrides) -> search.StudySpec:
    values = dict(dataset_id=dataset_id, base=dict(BASE), n_trials=6, sampler="random", pruner="median",
                  space=search.SearchSpace(lr=(1e-3, 1e-2), batch_sizes=[8]))
    values.update(overrides)
    return search.StudySpec(**values)


def test_six_trials_with_pruning(tiny_segmentation):
    name = search.create_study(_spec(tiny_segmentation, space=search.SearchSpace(lr=(1e-7, 1e-2), batch_sizes=[8])))
    study = search.load_study(name)
    # Two healthy trials set the median; the next ones learn nothing (lr 1e-7), so the median pruner must stop
    # them after their first epoch.
    for lr in (5e-3, 5e-3, 1e-7, 1e-7, 1e-7, 1e-7):
        study.enqueue_trial({"lr": lr})
    result = search.run_search(name)
    assert result["trials"] == 6
    assert result["states"]["pruned"] >= 1 and result["states"]["complete"] >= 2
    runs = store.list_runs(study=name)
    assert len(runs) == 6
    pruned = [r for r in runs if r["status"] == "pruned"]
    assert pruned and all(r["epoch"] < 3 for r in pruned) and "Pruned" in pruned[0]["message"]
    table = search.trials_table(name)
    assert {row["state"] for row in table} >= {"complete", "pruned"}


def test_best_params_round_trip_into_a_run_config(tiny_segmentation):
    space = search.SearchSpace(lr=(1e-3, 1e-2), batch_sizes=[4, 8], optimizers=["adam", "sgd"],
                               augment_levels=["none", "light"])
    name = search.create_study(_spec(tiny_segmentation, n_trials=2, pruner="none", space=space))
    result = search.run_search(name)
    config = search.best_config(name)
    assert isinstance(config, RunConfig)
    params = result["best_params"]
    assert config.lr == params["lr"] and config.batch_size == params["batch_size"]
    assert config.optimizer == params["optimizer"]
    assert config.augment == list(search.AUGMENT_LEVELS[params["augment_level"]])
    assert config.dataset_id == tiny_segmentation and config.monitor == "dice"
    assert RunConfig.from_json(config.to_json()) == config


def test_best_config_keeps_single_choice_settings(tiny_segmentation):
    """A dimension with one option is not an Optuna parameter, but the trials used it: so must 'best'."""
    space = search.SearchSpace(lr=(1e-3, 1e-2), batch_sizes=[4], optimizers=["sgd"], augment_levels=["light"])
    name = search.create_study(_spec(tiny_segmentation, n_trials=1, pruner="none", space=space))
    search.run_search(name)
    config = search.best_config(name)
    assert (config.batch_size, config.optimizer) == (4, "sgd")
    assert config.augment == list(search.AUGMENT_LEVELS["light"])


def test_best_config_before_any_trial_is_a_readable_error(tiny_segmentation):
    from engine.errors import UserError
    name = search.create_study(_spec(tiny_segmentation))
    with pytest.raises(UserError, match="no completed trial"):
        search.best_config(name)


@pytest.mark.slow
def test_two_processes_share_one_study(tiny_segmentation):
    name = search.create_study(_spec(tiny_segmentation, n_trials=6, pruner="none"))
    env = dict(os.environ)
    procs = [subprocess.Popen([sys.executable, "-m", "engine", "search", "--study", name, "--quiet", "--json"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()[-2000:]
    trials = search.trials_table(name)
    numbers = [t["trial"] for t in trials]
    run_ids = [t["run_id"] for t in trials]
    assert len(numbers) == len(set(numbers)) and len(run_ids) == len(set(run_ids))
    # Each process stops once the study holds n_trials; a race can add at most one extra trial per process.
    assert 6 <= len(trials) <= 7
    runs = store.list_runs(study=name)
    assert len(runs) == len(trials) and all(r["attempts"] == 1 for r in runs)
    assert len({r["worker"] for r in runs}) >= 1
    assert {t["state"] for t in trials} == {"complete"}


def _trial_with_run(dataset_id: str, status: str):
    """A two-trial study whose first trial was asked and given a run, as `run_trial` does before training."""
    from engine.runs.submit import create_run
    name = search.create_study(_spec(dataset_id, n_trials=2, pruner="none"))
    study = search.load_study(name)
    trial = study.ask()
    params = search.suggest(trial, search.load_spec(name).space)
    run_id = create_run(search.config_from_params(search.load_spec(name).base, params), status=status,
                        study=name, trial=trial.number)
    trial.set_user_attr("run_id", run_id)
    return name, study, trial, params, run_id


def test_trial_of_a_dead_worker_is_failed_and_retried(tiny_segmentation):
    """A trial whose run stopped heartbeating (worker killed) is failed and queued again with its parameters."""
    from optuna.trial import TrialState
    name, study, trial, params, run_id = _trial_with_run(tiny_segmentation, "running")
    store.update_run(run_id, heartbeat_at=store.now() - 3600)       # its process died an hour ago
    assert search.fail_stale_trials(study) == 1
    assert store.get_run(run_id)["status"] == "interrupted"
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states[trial.number] == TrialState.FAIL
    retry = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.WAITING]
    assert len(retry) == 1 and retry[0].system_attrs["fixed_params"]["lr"] == pytest.approx(params["lr"])
    result = search.run_search(name)                                 # the retry runs like any trial
    assert result["states"]["complete"] == 2 and result["states"]["fail"] == 1
    retried = [t for t in search.trials_table(name) if t["state"] == "complete" and t["lr"] == pytest.approx(params["lr"])]
    assert retried, "the retried trial should train with the dead trial's parameters"


def test_a_trial_whose_run_was_deleted_is_failed_and_retried(tiny_segmentation):
    """Deleting a stalled trial's run on the Monitor page must not leave the study waiting for it forever."""
    from optuna.trial import TrialState

    from engine.runs import lifecycle
    name, study, trial, _, run_id = _trial_with_run(tiny_segmentation, "interrupted")
    assert lifecycle.delete(run_id) == "deleted"
    (row,) = search.trials_table(name)
    assert row["state"] == "running" and row["run_status"] == "deleted"
    assert search.fail_stale_trials(study) == 1
    assert study.get_trials(deepcopy=False)[trial.number].state == TrialState.FAIL


def test_background_process_is_seen_alive_then_gone(lightbox_env):
    """The Search page tells a running search process from one that died (a zombie child counts as gone)."""
    import socket
    logs = lightbox_env / "logs"
    logs.mkdir(parents=True)
    (logs / "s.log").write_text("trial 0 …\nerror: out of memory\n\n")
    proc = subprocess.Popen(["sleep", "30"])
    try:
        (logs / "s.pid").write_text(f"{proc.pid} {socket.gethostname()}")
        found = search.background_process("s")
        assert found["alive"] is True and found["last_line"] == "error: out of memory"
        assert abs(found["started"] - time.time()) < 60
        proc.kill()
        time.sleep(0.2)                       # not waited for: a zombie
        assert search.background_process("s")["alive"] is False
    finally:
        proc.wait()
    assert search.background_process("s")["alive"] is False
    (logs / "s.pid").write_text(f"{proc.pid} another-machine")
    assert search.background_process("s") is None
    assert search.background_process("never-started") is None
