"""A hidden test split is not even computed for a student's run: only a hand-in scores it (issue 14)."""
from __future__ import annotations

import pytest

from engine.accounts import users
from engine.accounts.actor import Actor
from engine.classroom import assignments
from engine.config import RunConfig
from engine.data.manifest import load_manifest
from engine.data.resplit import resplit
from engine.errors import UserError
from engine.runs import execute, store
from engine.runs.submit import create_run

TEACHER = Actor("teach", "instructor")


def _trained(dataset_id: str, owner: str | None) -> dict:
    config = RunConfig(dataset_id=dataset_id, arch="lenet5", epochs=1, batch_size=8, image_size=32, preview_samples=0)
    run_id = create_run(config, status="running")
    store.update_run(run_id, owner=owner)
    run = execute.run_job(run_id)
    assert run["status"] == "done", run["message"]
    return run


def test_training_does_not_score_a_students_run_on_a_hidden_test(tiny_classification):
    users.add_user("teach", "instructor", "a long enough password")
    users.add_user("alice", "student", "another long password")
    assert _trained(tiny_classification, "alice")["test"]              # no assignment yet: scored as always
    assignments.create_assignment(TEACHER, tiny_classification, "Week 1", hide_test=True)
    assert _trained(tiny_classification, "alice")["test"] is None      # hidden: nothing to read, strip or leak
    assert _trained(tiny_classification, "teach")["test"]              # the instructor's own run is scored
    assert _trained(tiny_classification, None)["test"]                 # so is a run made without accounts
    assignments.release(TEACHER, "Week 1")
    assert _trained(tiny_classification, "alice")["test"]              # released: back to normal


def test_a_students_model_card_has_no_hidden_test_values(tiny_classification, tmp_path):
    """A run trained before its dataset became an assignment with a hidden test still holds test metrics: the
    student's export must not print them in the model card; the instructor's export does."""
    from engine.inference.export import export_run
    users.add_user("teach", "instructor", "a long enough password")
    users.add_user("alice", "student", "another long password")
    run = _trained(tiny_classification, "alice")
    assert run["test"]
    assignments.create_assignment(TEACHER, tiny_classification, "Week 1", hide_test=True)
    student = export_run(run["id"], tmp_path / "alice", actor=Actor("alice", "student"))["model_card"].read_text()
    teacher = export_run(run["id"], tmp_path / "teach", actor=TEACHER)["model_card"].read_text()
    test_section = lambda card: card.split("## Held-out test metrics")[1].split("\n## ")[0]  # noqa: E731
    assert "accuracy" in test_section(teacher).lower()
    assert "accuracy" not in test_section(student).lower()


def test_a_student_cannot_split_a_hidden_test_dataset_again(tiny_classification):
    """Splitting again makes a new dataset from the same images: for a hidden test, that would show it."""
    users.add_user("teach", "instructor", "a long enough password")
    users.add_user("alice", "student", "another long password")
    alice = Actor("alice", "student")
    assert load_manifest(resplit(tiny_classification, "none", actor=alice))["owner"] == "alice"   # no assignment yet
    assignments.create_assignment(TEACHER, tiny_classification, "Week 1", hide_test=True)
    with pytest.raises(UserError, match="hidden for an assignment"):
        resplit(tiny_classification, "none", actor=alice)
    assert load_manifest(resplit(tiny_classification, "none", actor=TEACHER))["owner"] == "teach"
