"""Searches have an owner (issue 14): a student's search runs its trials as the student's runs, inside the limits of
an assignment (it stops, with a reason, when they are used up); other students neither see nor act on it; a hidden
test split shows no test values in a student's search summary."""
from __future__ import annotations

import json

import pytest

from engine.accounts import users
from engine.accounts.access import AccessDenied
from engine.accounts.actor import Actor
from engine.classroom import assignments
from engine.cli.main import main
from engine.errors import UserError
from engine.runs import store
from engine.search import study as search

ALICE, BOB, PROF = Actor("alice", "student"), Actor("bob", "student"), Actor("prof", "instructor")
BASE = {"arch": "lenet5", "epochs": 1, "image_size": 32, "batch_size": 8, "preview_samples": 0}


@pytest.fixture
def classroom(tiny_classification) -> str:
    """Two students and an instructor; the tiny classification dataset (no owner: the class may use it)."""
    for name, role in (("alice", "student"), ("bob", "student"), ("prof", "instructor")):
        users.add_user(name, role, f"{name} has a long password")
    return tiny_classification


def _spec(dataset_id: str, n_trials: int = 2, name: str = "", **base) -> search.StudySpec:
    return search.StudySpec(dataset_id=dataset_id, base={**BASE, **base}, n_trials=n_trials, sampler="random",
                            pruner="none", space=search.SearchSpace(lr=(1e-3, 1e-2), batch_sizes=[8]), name=name)


def _cli(capsys, *argv: str) -> tuple[int, dict | None, str]:
    """Exit code, the last JSON line of stdout (None when there is none) and stderr of `python -m engine ...`."""
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return code, json.loads(lines[-1]) if lines else None, err


def test_a_students_search_records_its_owner_and_every_trial_run_is_theirs(classroom):
    name = search.create_study(_spec(classroom), actor=ALICE)
    assert search.load_spec(name).owner == "alice"
    result = search.run_search(name, actor=ALICE)
    assert result["states"]["complete"] == 2 and result["owner"] == "alice"
    runs = store.list_runs(study=name)
    assert len(runs) == 2 and {r["owner"] for r in runs} == {"alice"}
    assert [r["id"] for r in store.list_runs(owner="alice")] == [r["id"] for r in runs]


def test_a_search_made_without_accounts_has_no_owner_as_before(classroom):
    name = search.create_study(_spec(classroom, n_trials=1))
    assert search.load_spec(name).owner is None
    search.run_search(name)
    assert [r["owner"] for r in store.list_runs(study=name)] == [None]
    assert search.list_studies()[0]["owner"] is None


def test_a_study_recorded_before_owners_loads_with_no_owner(classroom):
    name = search.create_study(_spec(classroom, n_trials=1))
    study = search.load_study(name)
    old = dict(study.user_attrs["spec"])
    del old["owner"]
    study.set_user_attr("spec", old)
    assert search.load_spec(name).owner is None
    assert search.summary(name)["owner"] is None
    with pytest.raises(AccessDenied):             # nobody's search is the operator's, not a student's
        search.summary(name, actor=ALICE)


def test_the_search_of_a_removed_user_runs_no_more_trials(classroom):
    name = search.create_study(_spec(classroom, n_trials=1, name="old sweep"), actor=ALICE)
    users.remove_user("alice")
    with pytest.raises(UserError) as refused:
        search.run_search(name)
    assert str(refused.value) == ("Search 'old sweep' belongs to 'alice', who no longer has an account, so it runs "
                                  "no more trials; start a new search instead.")
    assert store.list_runs(study=name) == [] and search.summary(name, actor=PROF)["owner"] == "alice"


def test_another_student_cannot_list_show_stop_or_run_a_students_search(classroom, monkeypatch):
    name = search.create_study(_spec(classroom, name="alice's secret sweep"), actor=ALICE)
    other = search.create_study(_spec(classroom, name="bob's sweep"), actor=BOB)
    assert [s["name"] for s in search.list_studies(ALICE)] == [name]
    assert [s["name"] for s in search.list_studies(BOB)] == [other]
    started: list = []
    monkeypatch.setattr(search.subprocess, "Popen", lambda *a, **k: started.append(a))
    refusals = {"see": (lambda a: search.summary(name, actor=a), lambda a: search.trials_table(name, actor=a)),
                "stop": (lambda a: search.stop_search(name, wait=0, actor=a),),
                "run": (lambda a: search.run_search(name, actor=a), lambda a: search.launch_search(name, actor=a)),
                "train from": (lambda a: search.best_config(name, actor=a),)}
    for action, calls in refusals.items():
        for call in calls:
            with pytest.raises(AccessDenied) as refused:
                call(BOB)
            assert str(refused.value) == (f"Search 'alice's secret sweep' belongs to another user; you can only "
                                          f"{action} your own searches.")
    assert started == [] and store.list_runs(study=name) == []
    assert search.load_study(name).user_attrs.get(search.STOPPED_AT) is None
    for actor in (PROF, None):                   # the instructor and the operator see every search, with its owner
        listed = {s["name"]: s["owner"] for s in search.list_studies(actor)}
        assert listed == {name: "alice", other: "bob"}
        assert search.summary(name, actor=actor)["owner"] == "alice"
    assert search.summary(name, actor=ALICE)["trials"] == 0


def test_a_student_may_only_search_a_dataset_they_may_see(classroom, tiny_segmentation):
    from engine.data.manifest import dataset_dir, load_manifest
    path = dataset_dir(tiny_segmentation) / "manifest.json"
    manifest = load_manifest(tiny_segmentation)
    manifest["owner"] = "bob"
    path.write_text(json.dumps(manifest))
    with pytest.raises(AccessDenied, match=f"Dataset {tiny_segmentation} belongs to another student"):
        search.create_study(_spec(tiny_segmentation, arch="unet"), actor=ALICE)
    assert search.list_studies() == []


def test_the_cli_runs_a_students_search_as_theirs_and_refuses_other_students(classroom, capsys):
    code, result, err = _cli(capsys, "--as", "alice", "search", "--dataset", classroom, "--trials", "2",
                             "--epochs", "1", "--image-size", "32", "--batch-sizes", "8", "--arch", "lenet5",
                             "--sampler", "random", "--pruner", "none", "--name", "cli sweep", "--quiet")
    assert code == 0, err
    assert result["states"]["complete"] == 2 and result["owner"] == "alice"
    assert {r["owner"] for r in store.list_runs(study="cli sweep")} == {"alice"}
    assert len(store.list_runs(study="cli sweep")) == 2
    for argv in (("--study", "cli sweep", "--show"), ("--study", "cli sweep", "--stop"),
                 ("--study", "cli sweep", "--trials", "3")):
        code, result, err = _cli(capsys, "--as", "bob", "search", *argv)
        assert code != 0 and result is None
        assert err.count("\n") == 1 and "belongs to another user" in err and "Traceback" not in err, err
    assert len(store.list_runs(study="cli sweep")) == 2
    code, result, _ = _cli(capsys, "--as", "bob", "search", "--list")
    assert code == 0 and result["searches"] == []
    code, result, _ = _cli(capsys, "--as", "prof", "search", "--list")
    assert [(s["name"], s["owner"], s["trials"]) for s in result["searches"]] == [("cli sweep", "alice", 2)]
    code, result, _ = _cli(capsys, "--as", "alice", "search", "--study", "cli sweep", "--show")
    assert code == 0 and result["owner"] == "alice" and len(result["trial_rows"]) == 2


def test_the_background_search_of_a_student_runs_as_the_student(classroom, monkeypatch, capsys):
    """launch_search starts `python -m engine search --study NAME` without --as: the owner travels in the spec,
    and that command (run here in-process, with the very arguments of the launch) must not refuse."""
    name = search.create_study(_spec(classroom, n_trials=1), actor=ALICE)
    launched: list[list[str]] = []

    class Started:
        pid = 4242

    monkeypatch.setattr(search.subprocess, "Popen", lambda argv, **_: launched.append(argv) or Started())
    search.launch_search(name, actor=ALICE)
    (argv,) = launched
    assert argv[1:4] == ["-m", "engine", "search"] and "--as" not in argv
    code, result, err = _cli(capsys, *argv[3:])
    assert code == 0 and result["owner"] == "alice", err
    assert [r["owner"] for r in store.list_runs(study=name)] == ["alice"]


def test_a_students_search_stops_when_the_assignment_allows_no_more_runs(classroom, capsys):
    assignments.create_assignment(PROF, classroom, "Week 1", runs_per_student=1)
    name = search.create_study(_spec(classroom, n_trials=3), actor=ALICE)
    # The time limit only keeps a regression from spinning here: refused trials never count towards the three.
    result = search.run_search(name, timeout=60, actor=ALICE)
    runs = store.list_runs(study=name)
    assert len(runs) == 1 and runs[0]["owner"] == "alice"
    assert result["trials"] == 1 and result["states"]["complete"] == 1
    reason = result[search.LIMIT_REACHED]
    assert reason == ("You have used all 1 runs that assignment 'Week 1' allows; hand in one of your runs.")
    assert search.summary(name, actor=ALICE)[search.LIMIT_REACHED] == reason
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and reason in err
    # A new search with nothing left is refused up front, in one sentence, and records nothing.
    with pytest.raises(UserError, match="used all 1 runs"):
        search.create_study(_spec(classroom), actor=ALICE)
    assert len(search.list_studies()) == 1


def test_a_students_search_space_is_checked_against_the_assignment_limits_up_front(classroom):
    assignments.create_assignment(PROF, classroom, "Week 1", max_epochs=1, max_image_size=32)
    with pytest.raises(UserError) as refused:
        search.create_study(_spec(classroom, epochs=3), actor=ALICE)
    assert str(refused.value) == "Assignment 'Week 1' allows Epochs up to 1, not 3; set Epochs to 1 or less."
    with pytest.raises(UserError, match="allows Image size up to 32, not 64"):
        search.create_study(_spec(classroom, image_size=64), actor=ALICE)
    assert search.list_studies() == []
    assert search.create_study(_spec(classroom, epochs=3), actor=PROF)      # limits are for students


def test_a_students_search_summary_shows_no_hidden_test_values(classroom):
    name = search.create_study(_spec(classroom, n_trials=1), actor=ALICE)
    search.run_search(name, actor=ALICE)            # no assignment yet: the run is scored on the test split
    assert search.summary(name, actor=ALICE)["test"]["accuracy"] is not None
    assignments.create_assignment(PROF, classroom, "Week 1", hide_test=True)
    for view in (search.summary(name, actor=ALICE), search.trials_table(name, actor=ALICE),
                 search.list_studies(ALICE)):
        assert "test" not in json.dumps(view).replace("hide_test", ""), view
    assert search.summary(name, actor=PROF)["test"]["accuracy"] is not None
    assert search.summary(name)["test"]["accuracy"] is not None
    assignments.release(PROF, "Week 1")
    assert search.summary(name, actor=ALICE)["test"]["accuracy"] is not None


def test_another_students_run_is_not_the_bar_of_a_students_search(classroom):
    """'Train with the best' compares with a default-settings run on the dataset: for a student, one of their own,
    never another student's run (its id and score are not theirs to see)."""
    import optuna

    from engine.config import RunConfig
    from engine.search import baseline
    config = RunConfig(dataset_id=classroom, task="classification", arch="resnet18")
    bobs = store.insert_run(config.to_dict(), status="done", owner="bob")
    store.update_run(bobs, best={"accuracy": 0.9}, best_value=0.9, best_metric="accuracy")
    name = search.create_study(_spec(classroom, n_trials=1), actor=ALICE)
    lr = optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)
    search.load_study(name).add_trial(optuna.trial.create_trial(
        params={"lr": 2e-3}, distributions={"lr": lr}, value=0.8, user_attrs={"params": {"lr": 2e-3}}))
    assert baseline.verdict(name, actor=PROF)["bar_run_id"] == bobs          # the instructor compares with any run
    seen = baseline.verdict(name, actor=ALICE)
    assert seen["bar_run_id"] is None and bobs not in seen["reason"]
