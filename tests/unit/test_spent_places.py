"""Runs-per-student places stay spent (issue 14): deleting a run gives back neither its place nor its training
minutes, whoever deletes it, so a student cannot delete and resubmit past an assignment's limits."""
from __future__ import annotations

import json

import pytest

from engine.accounts import users
from engine.accounts.actor import Actor
from engine.classroom import assignments
from engine.cli.main import main
from engine.config import RunConfig
from engine.errors import UserError
from engine.runs import lifecycle, store
from engine.runs.submit import submit

ALICE, BOB, PROF = Actor("alice", "student"), Actor("bob", "student"), Actor("prof", "instructor")


@pytest.fixture
def classroom(lightbox_env):
    for actor in (ALICE, BOB, PROF):
        users.add_user(actor.name, actor.role, f"pw-{actor.name}")
    return lightbox_env


def _config(dataset_id: str) -> RunConfig:
    return RunConfig(dataset_id=dataset_id, arch="lenet5", epochs=1, batch_size=8, image_size=32)


def _finished(dataset_id: str, actor: Actor, seconds: float) -> str:
    """A student's run that ended (cancelled before training; its training time set as a worker would)."""
    run_id = submit(_config(dataset_id), actor=actor)
    assert lifecycle.cancel(run_id, actor=actor) == "cancelled"
    store.update_run(run_id, train_seconds=seconds)
    return run_id


@pytest.mark.postgres
def test_a_deleted_run_keeps_its_place_and_its_minutes(classroom, tiny_classification):
    assignments.create_assignment(PROF, tiny_classification, "hw1", runs_per_student=4, gpu_minutes=2)
    first, second = _finished(tiny_classification, ALICE, 30.0), _finished(tiny_classification, ALICE, 45.0)
    assert lifecycle.delete(first, actor=ALICE) == "deleted"
    assert lifecycle.delete(second, actor=PROF) == "deleted"          # deleted by the instructor: spent all the same
    assert store.get_run(first) is None and store.list_runs() == []
    assert assignments.student_usage("alice", tiny_classification) == (2, 75.0)
    assert assignments.student_usage("bob", tiny_classification) == (0, 0.0)
    third = _finished(tiny_classification, ALICE, 50.0)                # 125 s of 120: the minutes are spent
    with pytest.raises(UserError) as err:
        submit(_config(tiny_classification), actor=ALICE)
    assert str(err.value) == ("You have used your 2 training minutes for assignment 'hw1'; "
                              "hand in one of your runs.")
    lifecycle.delete(third, actor=ALICE)
    assert assignments.student_usage("alice", tiny_classification) == (3, 125.0)
    submit(_config(tiny_classification), actor=BOB)                    # bob's places are untouched


def test_delete_and_resubmit_through_the_cli_stays_refused(classroom, tiny_classification, capsys):
    assignments.create_assignment(PROF, tiny_classification, "hw1", runs_per_student=1)
    args = ("submit", "--dataset", tiny_classification, "--arch", "lenet5", "--image-size", "32", "--epochs", "1")

    def cli(*argv: str) -> tuple[int, dict | None, str]:
        code = main([*argv, "--json", "--quiet"])
        out, err = capsys.readouterr()
        return code, json.loads(out.strip().splitlines()[-1]) if code == 0 else None, err

    code, queued, err = cli(*args, "--as", "alice")
    assert code == 0, err
    assert cli("cancel", queued["run_id"], "--as", "alice")[0] == 0
    assert cli("delete", queued["run_id"], "--as", "alice")[1] == {"run_id": queued["run_id"], "status": "deleted"}
    code, _, err = cli(*args, "--as", "alice")
    assert code != 0 and err.strip() == ("error: You have used all 1 runs that assignment 'hw1' allows; "
                                         "hand in one of your runs."), err
    assert store.list_runs() == []


def test_runs_without_an_owner_are_deleted_as_before(lightbox_env, tiny_classification):
    """Single-user mode: nothing is limited, and a deleted run leaves nothing behind."""
    run_id = submit(_config(tiny_classification))
    lifecycle.cancel(run_id)
    assert lifecycle.delete(run_id) == "deleted"
    with store.db().connect() as conn:
        assert conn.execute(store.spent_runs.select()).all() == []
