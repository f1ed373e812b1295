"""Cross-validation for students (issue 14): `train --folds K` and `submit --folds K` under `--as STUDENT` make K
runs owned by the student, invisible to the others, and held to the assignment's runs-per-student limit as a
whole: all K places are checked before any fold is recorded."""
from __future__ import annotations

import json

import pytest
from races import race, slow_usage

from engine.accounts import users
from engine.accounts.actor import Actor
from engine.classroom import assignments
from engine.cli.main import main
from engine.config import RunConfig
from engine.runs import crossval, lifecycle, store

ALICE, BOB, PROF = Actor("alice", "student"), Actor("bob", "student"), Actor("prof", "instructor")
SETTINGS = ("--arch", "lenet5", "--image-size", "32", "--epochs", "1", "--batch-size", "8")


@pytest.fixture
def classroom(lightbox_env):
    for actor in (ALICE, BOB, PROF):
        users.add_user(actor.name, actor.role, f"pw-{actor.name}")
    return lightbox_env


def _cli(capsys, *args: str) -> tuple[int, dict | None, str]:
    code = main([*args, "--json", "--quiet"])
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    return code, json.loads(lines[-1]) if code == 0 and lines else None, err


def _refused(capsys, *args: str) -> str:
    code, _, err = _cli(capsys, *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and "Traceback" not in err, (args, code, err)
    return lines[0]


def _listed(capsys, who: str) -> list[str]:
    code, out, err = _cli(capsys, "runs", "--as", who)
    assert code == 0, err
    return sorted(r["run_id"] for r in out["runs"])


def test_a_students_folds_are_their_runs_and_need_all_their_places(classroom, tiny_classification, capsys):
    assignments.create_assignment(PROF, tiny_classification, "hw1", runs_per_student=8)
    data = ("--dataset", tiny_classification, *SETTINGS)

    code, trained, err = _cli(capsys, "train", *data, "--folds", "3", "--as", "alice")
    assert code == 0, err
    assert [f["fold"] for f in trained["folds"]] == [1, 2, 3] and all(f["status"] == "done" for f in trained["folds"])
    code, queued, err = _cli(capsys, "submit", *data, "--folds", "3", "--as", "alice")
    assert code == 0, err
    assert len(queued["run_ids"]) == 3 and queued["cv_id"].startswith(crossval.CV_PREFIX)

    made = sorted([f["run_id"] for f in trained["folds"]] + queued["run_ids"])
    assert len(set(made)) == 6
    assert {store.get_run(run_id)["owner"] for run_id in made} == {"alice"}
    assert [r["status"] for r in crossval.runs_of(queued["cv_id"])] == ["queued"] * 3
    assert _listed(capsys, "alice") == made
    assert _listed(capsys, "bob") == []                               # another student sees none of them
    assert _listed(capsys, "prof") == made

    # 6 of 8 places used: a third cross-validation needs 3, and nothing of it is recorded
    for command in ("submit", "train"):
        line = _refused(capsys, command, *data, "--folds", "3", "--as", "alice")
        assert "cross-validation with 3 folds needs 3 runs; you have 2 left" in line, line
        assert "hw1" in line and "8" in line
    assert len(store.list_runs()) == 6
    code, pair, err = _cli(capsys, "submit", *data, "--folds", "2", "--as", "alice")      # 2 folds fit exactly
    assert code == 0 and len(pair["run_ids"]) == 2, err
    assert "You have used all 8 runs" in _refused(capsys, "submit", *data, "--as", "alice")
    # bob's places are his own; the instructor and the operator have no limit
    for who in ("bob", "prof"):
        code, out, err = _cli(capsys, "submit", *data, "--folds", "3", "--as", who)
        assert code == 0 and {store.get_run(r)["owner"] for r in out["run_ids"]} == {who}, err
    code, out, err = _cli(capsys, "submit", *data, "--folds", "3")
    assert code == 0 and {store.get_run(r)["owner"] for r in out["run_ids"]} == {None}, err


def test_in_process_folds_are_reserved_together_and_a_cancelled_fold_is_skipped(classroom, tiny_classification):
    """run_folds_here records the K folds at once (the places are spent together); a fold cancelled while it
    waits its turn is not trained, and the others still are."""
    config = RunConfig(dataset_id=tiny_classification, arch="lenet5", epochs=1, batch_size=8, image_size=32,
                       preview_samples=0)
    seen = []

    class CancelFoldThree:
        """Attached to each fold: while fold 1 trains, the student cancels fold 3 (still waiting)."""
        def attach(self, events):
            pending = [r for r in store.list_runs(owner="alice") if r["status"] == "queued"]
            seen.append(len(pending))
            for run in pending:
                if run["trial"] == 3:
                    lifecycle.cancel(run["id"], actor=ALICE)

    result = crossval.run_folds_here(config, 3, handlers=lambda: [CancelFoldThree()], actor=ALICE)
    assert seen == [2, 0]                       # fold 1 starts with folds 2 and 3 recorded and waiting
    assert [(f["fold"], f["status"]) for f in result["folds"]] == [(1, "done"), (2, "done"), (3, "cancelled")]
    assert {r["owner"] for r in store.list_runs()} == {"alice"} and len(store.list_runs()) == 3


@pytest.mark.postgres
def test_two_cross_validations_racing_share_the_places_exactly(classroom, tiny_classification, monkeypatch):
    """Two tabs queue a 3-fold cross-validation at once with 4 places left: one gets its 3 runs, the other none
    (the usage query is slowed down so that, without the critical section, both would read 'no run yet')."""
    assignments.create_assignment(PROF, tiny_classification, "hw1", runs_per_student=4)
    slow_usage(monkeypatch)
    config = RunConfig(dataset_id=tiny_classification, arch="lenet5", epochs=1, batch_size=8, image_size=32)
    outcomes = race(2, lambda: len(crossval.create_folds(config, 3, actor=ALICE)[1]))
    assert len(outcomes) == 2 and outcomes.count(3) == 1, outcomes
    (refusal,) = [o for o in outcomes if o != 3]
    assert "cross-validation with 3 folds needs 3 runs; you have 1 left" in refusal
    assert len(store.list_runs(owner="alice")) == 3
