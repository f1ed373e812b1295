"""The class at a glance, for the instructor: one row per user (runs by status, share of the queue, training
minutes) and each student's use of an assignment's limits, counted exactly as the limits count (deleted runs
included). Plain rows; the Instructor page draws them, the CLI could print them."""
from __future__ import annotations

from engine.classroom import assignments

WORKING = ("queued", "starting", "running")
COUNTED = ("queued", "running", "done", "failed")


def class_rows(people: list[dict], runs: list[dict]) -> list[dict]:
    """One row per user: runs by status, share of the queue (their queued and training runs among everyone's)
    and training minutes of the runs that still exist."""
    working = sum(1 for r in runs if r["status"] in WORKING) or 1
    rows = []
    for person in people:
        own = [r for r in runs if r.get("owner") == person["name"]]
        mine = sum(1 for r in own if r["status"] in WORKING)
        rows.append({"User": person["name"], "Role": person["role"], "Runs": len(own),
                     **{status.capitalize(): sum(1 for r in own if r["status"] == status) for status in COUNTED},
                     "Queue share": f"{mine / working:.0%}",
                     "Training minutes": round(sum(r.get("train_seconds") or 0 for r in own) / 60, 1)})
    return rows


def quota_rows(found: dict, people: list[dict]) -> list[dict]:
    """Each student's use of an assignment's limits: runs made and training minutes on its dataset, deleted runs
    included (assignments.student_usage), next to the limit when there is one."""
    rows = []
    for person in people:
        if person["role"] != "student":
            continue
        runs, seconds = assignments.student_usage(person["name"], found["dataset_id"])
        limit_runs, limit_minutes = found.get("runs_per_student"), found.get("gpu_minutes")
        rows.append({"Student": person["name"],
                     "Runs": f"{runs}" + (f" of {limit_runs}" if limit_runs else ""),
                     "Training minutes": f"{seconds / 60:.1f}" + (f" of {limit_minutes:g}" if limit_minutes else "")})
    return rows
