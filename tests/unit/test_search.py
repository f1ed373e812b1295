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
    name = search.create_study(_spec(tiny_segmentation, space=search.SearchSpace(lr=(1e-6, 1e-2), batch_sizes=[8])))
    study = search.load_study(name)
    # Two healthy trials set the median; the next ones learn almost nothing (lr 1e-6, the lowest setting), so
    # the median pruner must stop them after their first epoch.
    for lr in (5e-3, 5e-3, 1e-6, 1e-6, 1e-6, 1e-6):
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


def test_a_search_space_outside_the_run_settings_is_refused(tiny_segmentation):
    """A learning rate below the setting's lowest would fail every trial it draws (and those never count)."""
    from engine.errors import UserError
    before = len(search.list_studies())
    with pytest.raises(UserError, match="Learning rate must be between 1e-06 and 1, not 1e-07"):
        search.create_study(_spec(tiny_segmentation, space=search.SearchSpace(lr=(1e-7, 1e-2))))
    with pytest.raises(UserError, match="Batch size must be between 2 and 1024, not 0"):
        search.create_study(_spec(tiny_segmentation, space=search.SearchSpace(batch_sizes=[0, 8])))
    assert len(search.list_studies()) == before


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


@pytest.mark.parametrize("stale_read", ["trial list", "trial list and trial"])
def test_two_processes_sweeping_the_same_stale_trial_retry_it_once(tiny_segmentation, monkeypatch, stale_read):
    """A Ray search's driver and its next task both sweep stale trials: the one that reads the trial as running
    after the other failed it must neither crash (CI saw UpdateFinishedTrialError end a search) nor queue a second
    retry."""
    from optuna.trial import TrialState
    name, study, trial, _, run_id = _trial_with_run(tiny_segmentation, "running")
    store.update_run(run_id, heartbeat_at=store.now() - 3600)
    other = search.load_study(name)                                  # the other process's own storage
    snapshot = other.get_trials(deepcopy=True, states=(TrialState.RUNNING,))
    assert search.fail_stale_trials(study) == 1                      # the first sweep wins
    monkeypatch.setattr(other, "get_trials", lambda *a, **k: snapshot)   # read just before that sweep wrote
    if stale_read == "trial list and trial":        # tell's own check passes too: the storage's write refuses it
        monkeypatch.setattr(other._storage, "get_trial", lambda trial_id: snapshot[0])
    assert search.fail_stale_trials(other) == 0
    trials = search.load_study(name).get_trials(deepcopy=False)
    assert [t.state for t in trials].count(TrialState.WAITING) == 1
    assert trials[trial.number].state == TrialState.FAIL


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


# ---- stopping a search ------------------------------------------------------------------------------------

def _wait_for(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _fake_search_process(lightbox_env, name: str) -> subprocess.Popen:
    """A process that looks like the page's background search of `name` (same command words) but only sleeps,
    so it never stops on its own; its pid file is written as launch_search writes it."""
    import socket
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "-m", "engine", "search",
                             "--study", name, "--quiet"], start_new_session=True)
    logs = lightbox_env / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (logs / f"{name}.pid").write_text(f"{proc.pid} {socket.gethostname()}")
    return proc


def test_stop_from_the_cli_cancels_the_running_trial_and_ends_the_search_process(tiny_segmentation, lightbox_env,
                                                                                  monkeypatch, capsys):
    """A real background search (as the page starts it) is stopped with `search --study NAME --stop --json`: its
    trial's run ends cancelled, Optuna holds no RUNNING trial, the process is gone; a later search continues."""
    import json

    from optuna.trial import TrialState

    from engine.cli.main import main
    name = search.create_study(_spec(tiny_segmentation, n_trials=2, pruner="none",
                                     base={**BASE, "epochs": 1000}))            # far longer than the test waits
    pid = search.launch_search(name)
    try:
        _wait_for(lambda: [r for r in store.list_runs(study=name) if r["epoch"] >= 1], 240, "the first epoch")
        code = main(["search", "--study", name, "--stop", "--json"])
    finally:
        if search.background_process(name)["alive"]:       # the stop failed: never leave the search running
            os.killpg(pid, 9)
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    result = json.loads(out.out.strip().splitlines()[-1])
    assert result["process"] == "ended"                    # it noticed the cancel and stopped by itself
    assert result["stopped"] is True and result["cancelled_trials"] == [0]
    assert result["states"]["running"] == 0 and result["states"]["cancelled"] == 1
    assert search.background_process(name)["alive"] is False
    (run,) = store.list_runs(study=name)
    assert run["status"] == "cancelled" and run["epoch"] < 1000
    assert not search.load_study(name).get_trials(states=(TrialState.RUNNING,))
    assert [row["state"] for row in search.trials_table(name)] == ["cancelled"]

    def quick_trial(study, spec):        # continuing runs new trials; training them is tested above
        trial = study.ask()
        study.tell(trial, 0.5)
        return TrialState.COMPLETE
    monkeypatch.setattr(search, "run_trial", quick_trial)
    continued = search.run_search(name)
    assert continued["states"]["complete"] == 2 and continued["states"]["cancelled"] == 1


def test_stop_ends_a_search_process_that_does_not_stop_by_itself(tiny_segmentation, lightbox_env):
    """A search process that ignores the cancel request (stuck in a long step) is ended after the wait, and its
    trial is finished for it: the run cancelled, the trial failed as cancelled."""
    from optuna.trial import TrialState
    name, study, trial, _, run_id = _trial_with_run(tiny_segmentation, "running")
    stuck = _fake_search_process(lightbox_env, name)
    try:
        result = search.stop_search(name, wait=0.5)
        assert stuck.wait(timeout=10) != 0                  # ended by a signal
    finally:
        stuck.kill()
    assert result["process"] == "killed" and result["cancelled_trials"] == [trial.number]
    assert store.get_run(run_id)["status"] == "cancelled"
    assert study.get_trials(deepcopy=False)[trial.number].state == TrialState.FAIL
    assert search.summary(name)["states"]["cancelled"] == 1


def test_stop_never_signals_a_process_that_is_not_the_search(tiny_segmentation, lightbox_env):
    """The pid file outlives its process and the pid can belong to another program by now: that one lives on."""
    import socket
    name, _, _, _, run_id = _trial_with_run(tiny_segmentation, "queued")
    other = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        logs = lightbox_env / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        (logs / f"{name}.pid").write_text(f"{other.pid} {socket.gethostname()}")
        result = search.stop_search(name, wait=0.2)
        assert other.poll() is None and result["process"] == "none"
    finally:
        other.kill()
        other.wait()
    assert store.get_run(run_id)["status"] == "cancelled"          # queued: cancelled at once
    assert search.summary(name)["states"]["running"] == 0


def test_stop_needs_a_study_and_says_so_in_one_line(lightbox_env, capsys):
    from engine.cli.main import main
    assert main(["search", "--stop"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --stop needs --study NAME, the search to stop."
    assert main(["search", "--study", "nope", "--stop", "--json"]) == 2
    assert "There is no search called 'nope'" in capsys.readouterr().err


# ---- when 'Train with the best parameters' is worth offering ---------------------------------------------

def _finished_study(dataset_id: str, values: list[float], **overrides) -> str:
    """A study whose trials finished with these values, without training (the verdict reads only values)."""
    import optuna
    name = search.create_study(_spec(dataset_id, n_trials=len(values), pruner="none", **overrides))
    study = search.load_study(name)
    lr = optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)
    for value in values:
        study.add_trial(optuna.trial.create_trial(params={"lr": 2e-3}, distributions={"lr": lr}, value=value,
                                                  user_attrs={"params": {"lr": 2e-3}}))
    return name


def _default_run(dataset_id: str, task: str, value: float, metric: str, **changes) -> str:
    """A finished run with the plain default settings (or those changed), as the Train page would leave it."""
    from engine.models import DEFAULT_ARCH
    config = RunConfig(dataset_id=dataset_id, task=task, arch=DEFAULT_ARCH[task], **changes)
    run_id = store.insert_run(config.to_dict(), status="done")
    store.update_run(run_id, best={metric: value}, best_value=value, best_metric=metric)
    return run_id


def test_a_best_score_of_zero_is_never_offered(tiny_segmentation):
    from engine.search import baseline
    verdict = baseline.verdict(_finished_study(tiny_segmentation, [0.0, 0.0]))
    assert verdict["offer"] is False and "Dice 0.000" in verdict["reason"]
    assert "learned anything" in verdict["reason"]


def test_the_best_trial_must_beat_the_run_with_default_settings(tiny_segmentation):
    from engine.models import get_spec
    from engine.search import baseline
    unet = get_spec("unet")
    _default_run(tiny_segmentation, "segmentation", 0.70, "dice")
    # As the Train page leaves a default run: the architecture's own size and options written out, a name.
    page_default = _default_run(tiny_segmentation, "segmentation", 0.72, "dice", image_size=unet.default_size,
                                model_options=unet.default_options(), name="baseline", seed=3)
    _default_run(tiny_segmentation, "segmentation", 0.95, "dice", lr=1e-2)          # not the defaults: ignored
    below = baseline.verdict(_finished_study(tiny_segmentation, [0.5, 0.71]))
    assert below["offer"] is False and below["bar"] == pytest.approx(0.72) and below["bar_run_id"] == page_default
    assert page_default in below["reason"] and "0.720" in below["reason"] and "Not offered" in below["reason"]
    above = baseline.verdict(_finished_study(tiny_segmentation, [0.5, 0.73]))
    assert above["offer"] is True and page_default in above["reason"]


def test_a_best_within_noise_of_the_default_says_so(tiny_segmentation):
    """0.75 vs 0.72 on 12 validation images is within chance; on 5,000 images it is a real gain."""
    from engine.search import baseline
    run_id = _default_run(tiny_segmentation, "segmentation", 0.72, "dice")
    store.update_run(run_id, best={"dice": 0.72, "dice_n": 12, "n": 12})
    close = baseline.verdict(_finished_study(tiny_segmentation, [0.75]))
    assert close["offer"] is True and close.get("within_noise") is True
    assert "within chance" in close["reason"] and "12 validation images" in close["reason"]
    store.update_run(run_id, best={"dice": 0.72, "dice_n": 5000, "n": 5000})
    clear = baseline.verdict(_finished_study(tiny_segmentation, [0.75]))
    assert clear["offer"] is True and not clear.get("within_noise") and "within chance" not in clear["reason"]


def test_without_a_default_run_the_bar_is_the_best_constant_guess(tiny_segmentation):
    """Every pixel one class, scored by the trainer's own meter on the validation images at the search's size."""
    import torch

    from engine.data.dataset import load_split
    from engine.metrics import SegmentationMeter
    from engine.search import baseline
    targets = torch.from_numpy(load_split(tiny_segmentation, "val", BASE["image_size"]).targets.astype("int64"))
    scores = []
    for label in (0, 1):
        meter = SegmentationMeter(2)
        meter.update(torch.full_like(targets, label), targets)
        scores.append(meter.compute()["dice"])
    expected = max(scores)
    assert expected > 0.01                          # marking everything as the structure overlaps it somewhat
    tie = baseline.verdict(_finished_study(tiny_segmentation, [expected]))
    assert tie["offer"] is False and tie["bar"] == pytest.approx(expected) and tie["bar_run_id"] is None
    assert "constant guess" in tie["reason"] and "marking every pixel as" in tie["reason"]
    assert baseline.verdict(_finished_study(tiny_segmentation, [expected + 0.01]))["offer"] is True


def test_classification_constant_guess_is_the_share_of_the_commonest_class(tiny_classification):
    import numpy as np

    from engine.data.dataset import load_split
    from engine.search import baseline
    labels = load_split(tiny_classification, "val", 32).targets
    share = float(np.bincount(labels).max() / len(labels))
    base = {"arch": "lenet5", "epochs": 1, "image_size": 32, "batch_size": 8, "preview_samples": 0}
    verdict = baseline.verdict(_finished_study(tiny_classification, [share], base=base))
    assert verdict["offer"] is False and verdict["bar"] == pytest.approx(share)
    assert "for every image" in verdict["reason"]
