"""The Instructor page's tables (engine.classroom.roster): the class and each student's use of an assignment's
limits, counted as the limits count them — a deleted run still shows in the quota."""
from __future__ import annotations

from engine.accounts import users
from engine.accounts.actor import Actor
from engine.classroom import assignments, roster
from engine.config import RunConfig
from engine.runs import lifecycle, store
from engine.runs.submit import submit

ALICE, BOB, PROF = Actor("alice", "student"), Actor("bob", "student"), Actor("prof", "instructor")


def test_class_and_quota_rows(lightbox_env, tiny_classification):
    for actor in (ALICE, BOB, PROF):
        users.add_user(actor.name, actor.role, f"pw-{actor.name}")
    assignments.create_assignment(PROF, tiny_classification, "hw1", runs_per_student=3, gpu_minutes=10)
    config = RunConfig(dataset_id=tiny_classification, arch="lenet5", epochs=1, batch_size=8, image_size=32)
    gone, kept = submit(config, actor=ALICE), submit(config, actor=ALICE)
    submit(config, actor=BOB)
    lifecycle.cancel(gone, actor=ALICE)
    store.update_run(gone, train_seconds=90.0)
    lifecycle.delete(gone, actor=ALICE)
    people = users.list_users()
    runs = store.list_runs()
    by_user = {row["User"]: row for row in roster.class_rows(people, runs)}
    assert by_user["alice"]["Runs"] == 1 and by_user["alice"]["Queued"] == 1 and by_user["alice"]["Queue share"] == "50%"
    assert by_user["prof"]["Runs"] == 0 and by_user["prof"]["Queue share"] == "0%"
    quota = {row["Student"]: row for row in roster.quota_rows(assignments.get_assignment("hw1"), people)}
    assert set(quota) == {"alice", "bob"}                               # instructors have no quota
    assert quota["alice"] == {"Student": "alice", "Runs": "2 of 3", "Training minutes": "1.5 of 10"}
    assert quota["bob"]["Runs"] == "1 of 3" and kept in {r["id"] for r in runs}
