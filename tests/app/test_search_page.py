"""Search page: define a search (no background process in tests), follow a finished study, draw every plot,
train with the best parameters (only when they beat the default run or a constant guess), stop and continue a
search; readable errors for a bad learning-rate range and for an empty workspace."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.runs import store
from engine.search import study as search

BASE = {"arch": "unet", "epochs": 2, "image_size": 32, "batch_size": 8, "preview_samples": 0,
        "model_options": {"depth": 2, "base": 8}}
PLOT_TITLES = ["Optimization history", "Parameter importances", "Parallel coordinates", "Slice", "Contour",
               "Intermediate values"]


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> dict[str, Path]:
    """Two workspaces built once: one with a tiny segmentation dataset, one with that plus a finished study."""
    from engine.data.demo import write_demo
    from engine.data.ingest import ingest
    root = tmp_path_factory.mktemp("search")
    data, study = root / "data", root / "study"
    mp = pytest.MonkeyPatch()
    mp.delenv("LIGHTBOX_DB_URL", raising=False)
    try:
        mp.setenv("LIGHTBOX_HOME", str(data))
        src = write_demo("segmentation", root / "src", n=24, size=32, seed=3)
        dataset_id = ingest(src, task="segmentation", name="tiny").dataset_id
        shutil.copytree(data, study)
        mp.setenv("LIGHTBOX_HOME", str(study))
        space = search.SearchSpace(lr=(1e-3, 3e-2), batch_sizes=[4, 8])      # two searched settings: a contour
        spec = search.StudySpec(dataset_id=dataset_id, base=dict(BASE), space=space, n_trials=4,
                                sampler="random", pruner="none", seed=0, name="lr and batch")
        search.run_search(search.create_study(spec))
        store.engine_for(f"sqlite:///{study / 'lightbox.db'}").dispose()
    finally:
        mp.undo()
    return {"data": data, "study": study}


@pytest.fixture
def with_data(lb, templates):
    shutil.copytree(templates["data"], lb.home)
    return lb


@pytest.fixture
def with_study(lb, templates):
    shutil.copytree(templates["study"], lb.home)
    return lb


@pytest.fixture
def launched(monkeypatch) -> list[str]:
    """Studies the page asked to run; no background process is started."""
    names: list[str] = []
    monkeypatch.setattr(search, "launch_search", lambda name, **_: names.append(name) or 4242)
    return names


def open_page(lb):
    at = lb.page("search.py").run()
    lb.no_exception(at)
    return at


def test_finished_study_is_listed_with_its_trials_and_every_plot(with_study):
    lb = with_study
    at = open_page(lb)
    picker = at.selectbox(key="search_study")
    assert picker.value == "lr and batch" and at.session_state["study"] == "lr and batch"
    table = at.dataframe[0].value
    assert len(table) == 4 and set(table["state"]) == {"complete"}
    assert {"learning rate", "batch size", "Dice"} <= set(table.columns)
    assert "4 of 4 trials finished" in at.get("progress")[0].proto.text
    assert "4 complete" in lb.texts(at, "markdown")
    assert any(m.label == "Best validation Dice" for m in at.metric)
    tabs = at.tabs
    assert [t.label for t in tabs] == PLOT_TITLES
    for tab in tabs:
        assert len(tab.get("plotly_chart")) == 1, tab.label          # a figure, not a "not yet" note
    assert len(lb.charts(at)) == len(PLOT_TITLES)
    assert not at.button(key="search_train_best").disabled


def test_train_with_the_best_parameters_queues_a_run(with_study):
    lb = with_study
    at = open_page(lb)
    at.button(key="search_train_best").click().run()
    lb.no_exception(at)
    best = search.summary("lr and batch")["best_params"]
    queued = store.list_runs(status=["queued"])
    assert len(queued) == 1
    config = queued[0]["config"]
    assert config["lr"] == best["lr"] and config["batch_size"] == best["batch_size"]
    assert config["name"] == "best of lr and batch" and at.session_state["run_id"] == queued[0]["id"]
    assert "queued" in lb.texts(at, "success")       # opened alone: no Monitor page to switch to


def test_start_search_from_the_form(with_data, launched):
    lb = with_data
    at = open_page(lb)
    assert "No searches yet" in lb.texts(at, "info")
    assert at.button(key="search_start").label == "Start 20 trials"
    at.number_input(key="search_trials").set_value(6).run()      # outside the form: the button follows it
    assert at.button(key="search_start").label == "Start 6 trials"
    assert at.multiselect(key="search_archs_segmentation").value == ["unet"]       # the Train page's default
    at.multiselect(key="search_archs_segmentation").set_value(["unet", "fcn_simple"])
    at.selectbox(key="search_objective_segmentation").set_value("iou")
    at.text_input(key="search_name").set_value("my sweep")
    at.number_input(key="search_lr_low").set_value(1e-3)
    at.number_input(key="search_lr_high").set_value(5e-2)
    at.multiselect(key="search_batch").set_value([4])
    at.multiselect(key="search_optimizers").set_value(["adam", "sgd"])
    at.multiselect(key="search_levels").set_value(["none", "light"])
    at.number_input(key="search_epochs").set_value(3)
    at.number_input(key="search_size").set_value(32)
    at.number_input(key="search_minutes").set_value(2)
    at.radio(key="search_sampler").set_value("random")
    at.radio(key="search_pruner").set_value("hyperband")
    at.number_input(key="search_seed").set_value(7)
    at.button(key="search_start").click().run()
    lb.no_exception(at)
    assert launched == ["my sweep"] and at.session_state["study"] == "my sweep"
    assert "started" in lb.texts(at, "success")
    spec = search.load_spec("my sweep")
    assert (spec.objective, spec.n_trials, spec.timeout, spec.sampler, spec.pruner, spec.seed) == \
        ("iou", 6, 120, "random", "hyperband", 7)
    assert tuple(spec.space.lr) == (1e-3, 5e-2)
    assert spec.space.archs == ["unet", "fcn_simple"] and spec.space.optimizers == ["adam", "sgd"]
    assert spec.space.augment_levels == ["none", "light"] and spec.space.weight_decay is None
    assert spec.base["epochs"] == 3 and spec.base["image_size"] == 32 and spec.base["batch_size"] == 4
    # The new, empty study is selected: no plot yet, each tab says why, and nothing to train with.
    assert at.selectbox(key="search_study").value == "my sweep"
    assert not lb.charts(at) and "Appears when the first trial finishes." in lb.texts(at, "info")
    assert at.button(key="search_train_best").disabled


def test_invalid_learning_rate_range_creates_nothing(with_data, launched):
    lb = with_data
    at = open_page(lb)
    at.number_input(key="search_lr_low").set_value(1e-2)
    at.number_input(key="search_lr_high").set_value(1e-3)
    at.button(key="search_start").click().run()
    lb.no_exception(at)
    assert "lowest learning rate must be below the highest" in lb.texts(at, "error")
    assert search.list_studies() == [] and launched == []


def test_no_dataset_points_to_the_data_page(lb):
    at = open_page(lb)
    info = lb.texts(at, "info")
    assert "**Data** page" in info and "No searches yet" in info
    assert "search_start" not in [b.key for b in at.button]


def test_a_search_process_that_died_early_is_reported_and_can_be_continued(with_data, launched):
    """The background search wrote an error and exited before its first trial: the page says so."""
    import socket
    import subprocess

    from engine.data.dataset import list_datasets
    lb = with_data
    spec = search.StudySpec(dataset_id=list_datasets()[0]["id"], base=dict(BASE),
                            space=search.SearchSpace(lr=(1e-3, 1e-2)), n_trials=3, sampler="random", pruner="none",
                            seed=0, name="crashed")
    search.create_study(spec)
    gone = subprocess.Popen(["true"])
    gone.wait()
    logs = lb.home / "logs"
    logs.mkdir(exist_ok=True)
    (logs / "crashed.log").write_text("error: The dataset 'x' was deleted.\n")
    (logs / "crashed.pid").write_text(f"{gone.pid} {socket.gethostname()}")
    at = open_page(lb)
    assert at.selectbox(key="search_study").value == "crashed"
    assert "The dataset 'x' was deleted." in lb.texts(at, "warning")
    at.button(key="search_continue").click().run()
    lb.no_exception(at)
    assert launched == ["crashed"]


def dataset_id() -> str:
    from engine.data.dataset import list_datasets
    return list_datasets()[0]["id"]


def hand_made_study(name: str, values: list[float], n_trials: int | None = None) -> str:
    """A study whose trials finished with these values, without training."""
    import optuna
    spec = search.StudySpec(dataset_id=dataset_id(), base=dict(BASE), space=search.SearchSpace(lr=(1e-3, 1e-2)),
                            n_trials=n_trials or len(values), sampler="random", pruner="none", name=name)
    search.create_study(spec)
    study = search.load_study(name)
    lr = optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)
    for value in values:
        study.add_trial(optuna.trial.create_trial(params={"lr": 2e-3}, distributions={"lr": lr}, value=value,
                                                  user_attrs={"params": {"lr": 2e-3}}))
    return name


def test_enter_in_a_field_does_not_start_a_search(with_data):
    """Only the button submits: Enter in a number field used to start a search with the other fields as they
    were."""
    at = open_page(with_data)
    (form,) = [f for f in at.get("form") if f.proto.form.form_id == "search_form"]
    assert form.proto.form.enter_to_submit is False


def test_the_start_button_says_how_many_trials_it_starts(with_data, launched):
    lb = with_data
    at = open_page(lb)
    assert at.button(key="search_start").label == "Start 20 trials"
    at.number_input(key="search_trials").set_value(1).run()
    assert at.button(key="search_start").label == "Start 1 trial"
    at.button(key="search_start").click().run()
    lb.no_exception(at)
    assert search.load_spec(launched[0]).n_trials == 1


def test_one_click_starts_one_search(with_data, launched):
    """The same form sent twice in a moment (a double click) starts one search, and says so."""
    lb = with_data
    at = open_page(lb)
    at.button(key="search_start").click().run()
    at.button(key="search_start").click().run()
    lb.no_exception(at)
    assert len(launched) == 1 and [s["name"] for s in search.list_studies()] == launched
    assert "one click starts one search" in lb.texts(at, "info")
    at.number_input(key="search_trials").set_value(3).run()        # a changed form is a new search
    at.button(key="search_start").click().run()
    assert len(launched) == 2


def test_form_labels_and_help_come_from_the_run_settings(with_data):
    from engine.config import BY_NAME, OPTIMIZER_TITLES
    at = open_page(with_data)
    optimizers = at.multiselect(key="search_optimizers")
    assert optimizers.options == [OPTIMIZER_TITLES[o] for o in BY_NAME["optimizer"].choices]
    assert BY_NAME["optimizer"].help in optimizers.help
    low = at.number_input(key="search_lr_low")
    assert BY_NAME["lr"].help in low.help and BY_NAME["lr"].teach in low.help
    assert (low.min, low.max) == (BY_NAME["lr"].low, BY_NAME["lr"].high)
    epochs = at.number_input(key="search_epochs")
    assert epochs.max == BY_NAME["epochs"].high and BY_NAME["epochs"].help in epochs.help
    assert at.number_input(key="search_size").label == BY_NAME["image_size"].label
    assert BY_NAME["batch_size"].help in at.multiselect(key="search_batch").help
    page = (Path(__file__).resolve().parents[2] / "pages" / "search.py").read_text()
    assert "OPTIMIZER_TITLES" not in page                 # engine.config holds the only optimizer title table


def test_train_with_the_best_is_not_offered_for_a_best_score_of_zero(with_data):
    lb = with_data
    hand_made_study("flat", [0.0, 0.0])
    at = open_page(lb)
    assert at.button(key="search_train_best").disabled
    assert "Not offered: the best trial scored Dice 0.000" in lb.texts(at, "caption")


def test_train_with_the_best_is_not_offered_below_the_default_run(with_data):
    from engine.config import RunConfig
    from engine.runs import store
    lb = with_data
    config = RunConfig(dataset_id=dataset_id(), task="segmentation", arch="unet")
    default_run = store.insert_run(config.to_dict(), status="done")
    store.update_run(default_run, best={"dice": 0.9}, best_value=0.9, best_metric="dice")
    hand_made_study("below default", [0.6, 0.8])
    at = open_page(lb)
    assert at.button(key="search_train_best").disabled
    caption = lb.texts(at, "caption")
    assert f"does not beat run {default_run}, trained with the default settings" in caption and "0.900" in caption
    hand_made_study("above default", [0.95])
    at.run().selectbox(key="search_study").set_value("above default").run()
    assert not at.button(key="search_train_best").disabled
    assert f"beats run {default_run}" in lb.texts(at, "caption")


def test_stop_a_running_search_then_continue_it(with_data, launched, monkeypatch):
    """A search with a trial running in a process that ignores the cancel request: Stop ends the process and
    the trial (its run cancelled), the page says the search was stopped, and Continue starts it again."""
    import socket
    import subprocess
    import sys

    from optuna.trial import TrialState

    from engine.runs import store
    from engine.runs.submit import create_run
    lb = with_data
    monkeypatch.setattr(search, "STOP_WAIT_SECONDS", 0.5)
    name = hand_made_study("to stop", [0.5], n_trials=3)
    study = search.load_study(name)
    trial = study.ask()
    config = search.config_from_params(search.load_spec(name).base, {"lr": 2e-3})
    run_id = create_run(config, status="running", study=name, trial=trial.number)
    trial.set_user_attr("run_id", run_id)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "-m", "engine", "search",
                             "--study", name], start_new_session=True)
    try:
        (lb.home / "logs").mkdir(exist_ok=True)
        (lb.home / "logs" / f"{name}.pid").write_text(f"{proc.pid} {socket.gethostname()}")
        at = open_page(lb)
        assert "1 running" in lb.texts(at, "markdown")
        assert "search_continue" not in [b.key for b in at.button]
        at.button(key="search_stop").click().run()
        lb.no_exception(at)
        assert proc.wait(timeout=10) != 0
    finally:
        proc.kill()
    assert store.get_run(run_id)["status"] == "cancelled"
    assert study.get_trials(deepcopy=False)[trial.number].state == TrialState.FAIL
    assert "Search 'to stop' stopped. Cancelled trial #1." in lb.texts(at, "success")
    assert "This search was stopped after 1 of 3 trials finished" in lb.texts(at, "info")
    assert "1 cancelled" in lb.texts(at, "markdown")
    assert "search_stop" not in [b.key for b in at.button]
    at.button(key="search_continue").click().run()
    lb.no_exception(at)
    assert launched == ["to stop"]


def test_a_student_sees_only_their_own_searches_and_may_start_one(with_data, launched):
    """Classroom mode: the page is open to students; their search is theirs (its trials will be their runs) and
    another student's search is neither listed nor shown."""
    from engine.accounts import users
    from engine.accounts.actor import Actor
    from pages import _auth
    lb = with_data
    for name in ("ana", "ben"):
        users.add_user(name, "student", f"{name} has a long password")
    spec = search.StudySpec(dataset_id=dataset_id(), base=dict(BASE), space=search.SearchSpace(lr=(1e-3, 1e-2)),
                            n_trials=2, sampler="random", pruner="none", name="ben's sweep")
    search.create_study(spec, actor=Actor("ben", "student"))
    at = lb.page("search.py")
    at.session_state[_auth._NAME] = "ana"
    at.run()
    lb.no_exception(at)
    assert "No searches yet" in lb.texts(at, "info") and "ben's sweep" not in lb.texts(at, "markdown")
    at.number_input(key="search_trials").set_value(2).run()
    at.text_input(key="search_name").set_value("ana's sweep")
    at.button(key="search_start").click().run()
    lb.no_exception(at)
    assert launched == ["ana's sweep"] and search.load_spec("ana's sweep").owner == "ana"
    assert [o.split(" · ")[0] for o in at.selectbox(key="search_study").options] == ["ana's sweep"]
    assert not at.error


def test_a_search_ended_by_an_assignment_limit_says_why_and_offers_no_continue(with_data):
    name = hand_made_study("limited", [0.5], n_trials=3)
    reason = "You have used all 1 runs that assignment 'Week 1' allows; hand in one of your runs."
    search.load_study(name).set_user_attr(search.LIMIT_REACHED, reason)
    at = open_page(with_data)
    assert f"This search ended before all its trials: {reason}" in with_data.texts(at, "warning")
    assert "search_continue" not in [b.key for b in at.button] and "search_stop" not in [b.key for b in at.button]
