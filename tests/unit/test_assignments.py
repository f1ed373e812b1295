"""Classroom assignments: limits at submit, a hidden test split, hand-ins scored once, the leaderboard."""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import subprocess
import sys

import pytest
from races import race, slow_usage

from engine.accounts import users
from engine.accounts.actor import Actor
from engine.classroom import assignments, handins
from engine.cli import assignment as assignment_cli
from engine.config import RunConfig
from engine.errors import UserError
from engine.runs import execute, store
from engine.runs.submit import create_run, submit

TEACHER = Actor("teach", "instructor")
ALICE = Actor("alice", "student")
BOB = Actor("bob", "student")


def _config(dataset_id: str, **overrides) -> RunConfig:
    base = dict(dataset_id=dataset_id, arch="lenet5", epochs=1, batch_size=8, image_size=32, preview_samples=0)
    base.update(overrides)
    return RunConfig(**base)


def _trained(dataset_id: str, owner: str | None, **overrides) -> dict:
    run_id = create_run(_config(dataset_id, **overrides), status="running")
    store.update_run(run_id, owner=owner)
    run = execute.run_job(run_id)
    assert run["status"] == "done", run["message"]
    return run


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


# ---- create, release, the hidden set ---------------------------------------------------------------------------

def test_an_instructor_hides_a_test_split_until_release(tiny_classification):
    made = assignments.create_assignment(TEACHER, tiny_classification, "Week 1", hide_test=True, max_epochs=3)
    assert made["hide_test"] and not made["released"] and not made["test_visible"] and made["metric"] == "accuracy"
    assert assignments.hidden_test_datasets() == {tiny_classification}
    assert assignments.hides_test_from(ALICE, tiny_classification)
    assert not assignments.hides_test_from(TEACHER, tiny_classification)
    assert not assignments.hides_test_from(None, tiny_classification)
    assert [a["name"] for a in assignments.list_assignments(ALICE)] == ["Week 1"]
    with pytest.raises(UserError) as err:
        assignments.release(ALICE, "Week 1")
    assert "Only an instructor" in _one_line(err)
    assert assignments.release(TEACHER, "Week 1")["test_visible"]
    assert assignments.hidden_test_datasets() == set()


def test_students_cannot_create_and_names_datasets_are_checked(tiny_classification):
    with pytest.raises(UserError) as err:
        assignments.create_assignment(ALICE, tiny_classification, "Mine")
    assert "Only an instructor" in _one_line(err)
    with pytest.raises(UserError) as err:
        assignments.create_assignment(TEACHER, "../../etc", "Week 1")
    assert "does not exist" in _one_line(err)
    with pytest.raises(UserError) as err:
        assignments.create_assignment(TEACHER, tiny_classification, "x" * 200)
    assert "cannot name an assignment" in _one_line(err)
    assignments.create_assignment(None, tiny_classification, "Week 1")         # the operator may
    with pytest.raises(UserError) as err:
        assignments.create_assignment(TEACHER, tiny_classification, "Week 2")
    assert "already an assignment 'Week 1'" in _one_line(err)
    with pytest.raises(UserError) as err:
        assignments.get_assignment("Week 9")
    assert "There is no assignment 'Week 9'" in _one_line(err)


# ---- limits at submit ------------------------------------------------------------------------------------------

def test_limits_are_refused_at_submit_in_one_line(tiny_classification):
    assignments.create_assignment(TEACHER, tiny_classification, "Week 1", max_epochs=3, max_image_size=64,
                                  runs_per_student=2)
    assignments.check_submission(ALICE, _config(tiny_classification, epochs=3))
    with pytest.raises(UserError) as err:
        assignments.check_submission(ALICE, _config(tiny_classification, epochs=4))
    assert _one_line(err) == "Assignment 'Week 1' allows Epochs up to 3, not 4; set Epochs to 3 or less."
    with pytest.raises(UserError) as err:
        assignments.check_submission(ALICE, _config(tiny_classification, image_size=128).to_dict())
    assert "Image size up to 64, not 128" in _one_line(err)
    assignments.check_submission(TEACHER, _config(tiny_classification, epochs=50))    # limits are for students
    assignments.check_submission(None, _config(tiny_classification, epochs=50))
    for _ in range(2):
        store.update_run(create_run(_config(tiny_classification)), owner="alice")
    store.update_run(create_run(_config(tiny_classification)), owner="bob")
    with pytest.raises(UserError) as err:
        assignments.check_submission(ALICE, _config(tiny_classification))
    assert "all 2 runs that assignment 'Week 1' allows" in _one_line(err)
    assignments.check_submission(BOB, _config(tiny_classification))              # bob has used one of two


def test_a_passed_deadline_closes_submissions(tiny_classification):
    assignments.create_assignment(TEACHER, tiny_classification, "Late", deadline=assignments.parse_deadline("2020-01-01"))
    with pytest.raises(UserError) as err:
        assignments.check_submission(ALICE, _config(tiny_classification))
    assert _one_line(err) == ("The deadline of assignment 'Late' passed at 2020-01-01T00:00:00Z; "
                              "no more runs can be submitted for it.")
    with pytest.raises(UserError) as err:
        assignments.parse_deadline("next friday")
    assert "is not a date" in _one_line(err)


# ---- hand-in, scored once, hidden values -----------------------------------------------------------------------

def test_hand_in_is_scored_once_on_the_test_split_and_hidden_from_students(tiny_classification):
    # Trained before the test was hidden, so training scored it; an lr this low keeps it from a trivial 100 %.
    early = _trained(tiny_classification, "alice", lr=1e-5)
    assignments.create_assignment(TEACHER, tiny_classification, "Week 1", hide_test=True)
    mine = _trained(tiny_classification, "alice", lr=3e-3)
    assert mine["test"] is None                             # training no longer scores it on the hidden test
    with pytest.raises(UserError) as err:
        handins.hand_in(BOB, "Week 1", mine["id"])
    assert "belongs to another" in _one_line(err) and "hand in your own runs" in _one_line(err)

    result = handins.hand_in(ALICE, "Week 1", early["id"])
    assert result["student"] == "alice" and result["run_id"] == early["id"]
    assert result["value"] is None and result["score"] is None and not result["test_visible"]
    stored = assignments.handin_of_run(early["id"])
    # The score is the best checkpoint on the test split, computed as the trainer computes a run's test metrics.
    assert stored["metric"] == "accuracy" and stored["score"]["n"] == early["test"]["n"]
    assert math.isclose(stored["value"], early["test"]["accuracy"], abs_tol=1e-9)
    assert stored["score"]["auc"] == pytest.approx(early["test"]["auc"])      # the same probabilities
    assert stored["score"]["confusion"] == early["test"]["confusion"]
    with pytest.raises(UserError) as err:
        handins.hand_in(ALICE, "Week 1", early["id"])
    assert "already handed in" in _one_line(err)

    assert handins.hand_in(ALICE, "Week 1", mine["id"])["value"] is None     # the latest hand-in stands
    scored = assignments.handin_of_run(mine["id"])
    assert scored["score"]["n"] == stored["score"]["n"] and 0.0 <= scored["value"] <= 1.0
    (row,) = assignments.leaderboard(ALICE, "Week 1")
    assert row["student"] == "alice" and row["run_id"] == mine["id"] and row["value"] is None and row["rank"] is None
    (row,) = assignments.leaderboard(TEACHER, "Week 1")
    assert row == {**row, "rank": 1, "student": "alice", "run_id": mine["id"], "value": scored["value"]}


def test_leaderboard_ranks_latest_handins_and_pseudonymises_others(tiny_classification):
    assignments.create_assignment(TEACHER, tiny_classification, "Week 1", hide_test=True)
    runs = {name: _trained(tiny_classification, name, lr=lr) for name, lr in (("alice", 3e-3), ("bob", 1e-5))}
    for name, run in runs.items():
        handins.hand_in(Actor(name, "student"), "Week 1", run["id"])
    board = assignments.leaderboard(TEACHER, "Week 1")
    values = [r["value"] for r in board]
    assert [r["rank"] for r in board] == [1, 2] and values == sorted(values, reverse=True)
    assert {r["student"] for r in board} == {"alice", "bob"}
    assert [r["student"] for r in assignments.leaderboard(ALICE, "Week 1")] == ["alice"]      # hidden: own only

    assignments.release(TEACHER, "Week 1")
    seen = assignments.leaderboard(ALICE, "Week 1")
    assert [r["value"] for r in seen] == values
    other = next(r for r in seen if r["student"] != "alice")
    assert other["student"] == assignments.pseudonym("Week 1", "bob") and other["run_id"] is None
    shown = assignments.leaderboard(TEACHER, "Week 1", pseudonyms=True)
    assert {r["student"] for r in shown} == {assignments.pseudonym("Week 1", n) for n in ("alice", "bob")}


def test_hand_in_refusals_are_one_line(tiny_classification, tiny_segmentation):
    assignments.create_assignment(TEACHER, tiny_classification, "Week 1")
    assignments.create_assignment(TEACHER, tiny_segmentation, "Late", deadline=assignments.parse_deadline("2020-01-01"))
    queued = create_run(_config(tiny_classification))
    other = create_run(_config(tiny_segmentation, arch="unet", model_options={"depth": 2, "base": 8}))
    for run_id in (queued, other):
        store.update_run(run_id, owner="alice")
    cases = [("Week 1", other, "was trained on another dataset than assignment 'Week 1'"),
             ("Late", other, "The deadline of assignment 'Late' passed at 2020-01-01T00:00:00Z; hand-ins are closed."),
             ("Week 1", queued, f"Run {queued} has not finished (queued); hand in a run that is done."),
             ("Week 9", queued, "There is no assignment 'Week 9'"),
             ("Week 1", "../../etc/passwd", "There is no run '../../etc/passwd'")]
    for name, run_id, expected in cases:
        with pytest.raises(UserError) as err:
            handins.hand_in(ALICE, name, run_id)
        assert expected in _one_line(err)


def test_a_run_is_recorded_once_even_when_two_hand_ins_race(tiny_classification):
    """hand_in looks first, but two at once both pass the look: the unique run id refuses the second insert."""
    assignments.create_assignment(TEACHER, tiny_classification, "Week 1")
    found = assignments.get_assignment("Week 1")
    assignments.record_handin(found, "alice", "run-1", {"accuracy": 0.5})
    with pytest.raises(UserError, match="already handed in and scored"):
        assignments.record_handin(found, "alice", "run-1", {"accuracy": 0.9})
    assert assignments.handin_of_run("run-1")["value"] == 0.5


def test_leaderboard_csv_cannot_carry_a_formula(lightbox_env, tiny_classification):
    assignments.create_assignment(TEACHER, tiny_classification, "Week 1")
    found = assignments.get_assignment("Week 1")
    for i, student in enumerate(("=HYPERLINK(\"http://x\")", "+1", "-2", "@SUM(A1)", "plain")):
        assignments.record_handin(found, student, f"run-{i}", {"accuracy": 0.1 * i})
    rows = list(csv.DictReader(io.StringIO(assignments.leaderboard_csv(TEACHER, "Week 1"))))
    assert [r["student"] for r in rows] == ["plain", "'@SUM(A1)", "'-2", "'+1", "'=HYPERLINK(\"http://x\")"]
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4", "5"] and rows[0]["value"] == "0.4"


# ---- the CLI module (its own parser; the subprocess tests need engineer A's --as) ------------------------------

def _parse(*argv: str, actor=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    assignment_cli.register(lambda name, text: sub.add_parser(name, help=text))
    args = parser.parse_args(list(argv))
    args.actor = actor
    return args


def test_cli_handlers_create_handin_and_leaderboard(tmp_path, tiny_classification):
    made = _parse("assignment", "create", "--dataset", tiny_classification, "--name", "Week 1", "--hide-test",
                  "--max-epochs", "2", "--runs-per-student", "3", "--deadline", "2999-01-01T00:00", actor=TEACHER)
    created = made.handler(made)["assignment"]
    assert created["max_epochs"] == 2 and created["runs_per_student"] == 3 and created["hide_test"]
    assert created["deadline_iso"] == "2999-01-01T00:00:00Z"
    run = _trained(tiny_classification, "alice")
    args = _parse("assignment", "handin", "Week 1", "--run", run["id"], actor=ALICE)
    assert args.handler(args)["value"] is None
    args = _parse("assignment", "leaderboard", "Week 1", "--csv", str(tmp_path / "board.csv"), actor=TEACHER)
    out = args.handler(args)
    assert out["leaderboard"][0]["student"] == "alice" and out["leaderboard"][0]["value"] is not None
    assert (tmp_path / "board.csv").read_text().splitlines()[1].startswith("1,alice,")
    args = _parse("assignment", "handin", "Week 1", actor=ALICE)
    with pytest.raises(UserError, match="needs --run"):
        args.handler(args)


# ---- through `python -m engine` (the contract) -----------------------------------------------------------------

def _cli(home, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LIGHTBOX_HOME": str(home)}
    env.pop("LIGHTBOX_DB_URL", None)
    return subprocess.run([sys.executable, "-m", "engine", *args, "--json"], capture_output=True, text=True,
                          env=env, timeout=300)


def _ok(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _refused(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.mark.skipif(bool(os.environ.get("LIGHTBOX_DB_URL")), reason="the CLI subprocesses use the SQLite workspace")
def test_cli_assignment_hides_test_values_from_students_until_release(lightbox_env, tiny_classification):
    """The contract lines through `python -m engine` (each call imports torch: kept to the ones that matter)."""
    home = lightbox_env
    for name, role in (("teach", "instructor"), ("alice", "student"), ("bob", "student")):
        users.add_user(name, role, "a long enough password")
    run = _trained(tiny_classification, "alice")           # before the assignment: training scored its test split
    created = _ok(_cli(home, "assignment", "create", "--dataset", tiny_classification, "--name", "Week 1",
                       "--hide-test", "--max-epochs", "2", "--runs-per-student", "2", "--as", "teach"))
    assert created["assignment"]["hide_test"] and created["assignment"]["max_epochs"] == 2
    assert created["assignment"]["runs_per_student"] == 2

    (row,) = _ok(_cli(home, "runs", "--as", "alice"))["runs"]
    assert row["run_id"] == run["id"] and "test" not in row and not any(k.startswith("test") for k in row["best"])
    (row,) = _ok(_cli(home, "runs", "--as", "teach"))["runs"]
    assert row["test"]["accuracy"] == run["test"]["accuracy"]

    assert "belongs to another" in _refused(_cli(home, "assignment", "handin", "Week 1", "--run", run["id"],
                                                 "--as", "bob"))
    handed = _ok(_cli(home, "assignment", "handin", "Week 1", "--run", run["id"], "--as", "alice"))
    assert handed["run_id"] == run["id"] and handed["value"] is None and handed["score"] is None
    board = _ok(_cli(home, "assignment", "leaderboard", "Week 1", "--as", "teach"))
    assert board["metric"] == "accuracy"
    assert board["leaderboard"] == [{**board["leaderboard"][0], "rank": 1, "student": "alice",
                                     "value": pytest.approx(run["test"]["accuracy"])}]

    assignments.release(TEACHER, "Week 1")
    (row,) = _ok(_cli(home, "runs", "--as", "alice"))["runs"]
    assert row["test"]["accuracy"] == run["test"]["accuracy"]


def test_submit_refuses_a_students_run_over_the_limit(tiny_classification):
    """engine.runs.submit (engineer A) asks check_submission for a student's run; the instructor's is not limited."""
    users.add_user("alice", "student", "a long enough password")
    users.add_user("teach", "instructor", "a long enough password")
    assignments.create_assignment(TEACHER, tiny_classification, "Week 1", max_epochs=2, runs_per_student=1)
    with pytest.raises(UserError, match="allows Epochs up to 2, not 3"):
        submit(_config(tiny_classification, epochs=3), actor=ALICE)
    assert store.list_runs() == []
    first = submit(_config(tiny_classification, epochs=2), actor=ALICE)
    with pytest.raises(UserError, match="You have used all 1 runs that assignment 'Week 1' allows"):
        submit(_config(tiny_classification, epochs=2), actor=ALICE)
    submit(_config(tiny_classification, epochs=3), actor=TEACHER)
    assert [r["owner"] for r in store.list_runs()] == ["teach", "alice"] and store.get_run(first)["owner"] == "alice"


# ---- several places at once; one student's submits racing ------------------------------------------------------

def test_check_submission_counts_every_run_asked_for(tiny_classification):
    assignments.create_assignment(TEACHER, tiny_classification, "Week 1", runs_per_student=5)
    store.update_run(create_run(_config(tiny_classification)), owner="alice")
    assignments.check_submission(ALICE, _config(tiny_classification), count=4)          # 1 + 4 = 5: fits
    from dataclasses import replace
    fold = replace(_config(tiny_classification), folds=5, fold=1)
    with pytest.raises(UserError) as err:
        assignments.check_submission(ALICE, fold, count=5)
    assert _one_line(err) == ("Assignment 'Week 1' allows 5 runs per student: cross-validation with 5 folds "
                              "needs 5 runs; you have 4 left. Set Folds to 4 or fewer.")
    with pytest.raises(UserError) as err:                   # the other job of several runs: a learning curve
        assignments.check_submission(ALICE, replace(_config(tiny_classification), train_fraction=0.5), count=5)
    assert _one_line(err) == ("Assignment 'Week 1' allows 5 runs per student: a learning curve of 5 training-set "
                              "sizes needs 5 runs; you have 4 left. Train a single run instead.")
    for _ in range(3):
        store.update_run(create_run(_config(tiny_classification)), owner="alice")
    with pytest.raises(UserError) as err:
        assignments.check_submission(ALICE, replace(fold, folds=2), count=2)
    assert _one_line(err).endswith("needs 2 runs; you have 1 left. Train a single run (Folds 1) instead.")
    assignments.check_submission(ALICE, _config(tiny_classification))                   # the last place
    assignments.check_submission(TEACHER, _config(tiny_classification), count=50)


@pytest.mark.postgres
def test_concurrent_submits_of_one_student_get_exactly_the_limit(tiny_classification, monkeypatch):
    """Five tabs submit at once against runs_per_student=2: the check and the insert are one critical section
    per student, so exactly 2 runs are recorded (on SQLite and on PostgreSQL). The usage query is slowed down so
    that, without the critical section, every submit would read 'no run yet' before any inserts."""
    assignments.create_assignment(TEACHER, tiny_classification, "Week 1", runs_per_student=2)
    slow_usage(monkeypatch)
    outcomes = race(5, lambda: submit(_config(tiny_classification), actor=ALICE))
    made = [o for o in outcomes if not o.startswith("You have used")]
    refused = [o for o in outcomes if o.startswith("You have used")]
    assert len(made) == 2 and len(refused) == 3, (made, refused)
    assert all("You have used all 2 runs" in line for line in refused)
    assert sorted(r["id"] for r in store.list_runs(owner="alice")) == sorted(made)
    submit(_config(tiny_classification), actor=BOB)          # another student's submit is not held up for good
