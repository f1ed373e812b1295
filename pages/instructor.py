"""Instructor: the class at a glance (students, their runs, share of the queue, use of each assignment's limits),
each assignment's leaderboard with a CSV, and new assignments. In the menu of instructors only; the engine checks
again (create and release refuse a student)."""
from __future__ import annotations

from datetime import datetime, time, timezone

import pandas as pd
import streamlit as st

from engine.accounts import users
from engine.classroom import assignments, roster
from engine.data.manifest import list_datasets
from engine.errors import UserError
from engine.runs import store
from pages import _auth as auth
from pages import _widgets as w

BOARD_COLUMNS = {"rank": "Rank", "student": "Student", "run_id": "Run", "metric": "Metric", "value": "Test score",
                 "handed_in_at": "Handed in (UTC)"}


def limits_line(found: dict) -> str:
    metric = w.METRIC_TITLES.get(found["metric"], found["metric"])
    parts = [f"dataset {w.as_text(found['dataset_id'])}", f"ranked by {metric}"]
    if found["hide_test"]:
        parts.append("test split released" if found["released"] else "test split hidden from students")
    for key, label in (("max_epochs", "epochs ≤"), ("max_image_size", "image size ≤"),
                       ("runs_per_student", "runs per student ≤"), ("gpu_minutes", "training minutes ≤")):
        if found[key]:
            parts.append(f"{label} {found[key]:g}")
    if found["deadline_iso"]:
        parts.append(f"deadline {w.when_iso(found['deadline_iso'])}")
    return " · ".join(parts)


def release(actor, name: str) -> None:
    try:
        assignments.release(actor, name)
        st.session_state["instructor_notice"] = ("success", f"Released the test results of {w.as_text(name)}.")
    except Exception as err:  # noqa: BLE001 - the engine's sentence, or a short apology
        st.session_state["instructor_notice"] = ("error", w.as_text(err) if isinstance(err, UserError)
                                                 else "Could not release it; try again.")


def assignment_panel(actor, found: dict, people: list[dict]) -> None:
    name = found["name"]
    st.markdown(f"#### {w.as_text(name)}")
    st.caption(limits_line(found))
    pseudonyms = st.toggle("Pseudonyms (to show the class)", key=f"instructor_pseudo_{name}")
    board = assignments.leaderboard(actor, name, pseudonyms=pseudonyms)
    if board:
        st.dataframe(pd.DataFrame(board).rename(columns=BOARD_COLUMNS), hide_index=True,
                     key=f"instructor_board_{name}")
        st.download_button("Download the leaderboard (CSV)", assignments.leaderboard_csv(actor, name, pseudonyms),
                           f"leaderboard-{name}.csv", "text/csv", key=f"instructor_csv_{name}")
    else:
        st.caption("No hand-ins yet.")
    if found["hide_test"] and not found["released"]:
        st.button("Release the test results to the students", key=f"instructor_release_{name}", on_click=release,
                  args=(actor, name), help="Students then see test scores of their runs and the ranked leaderboard.")
    with st.expander("Use of the limits per student"):
        st.dataframe(pd.DataFrame(roster.quota_rows(found, people)), hide_index=True, key=f"instructor_quota_{name}")


def deadline_seconds(day, hour) -> float | None:
    if day is None:
        return None
    return datetime.combine(day, hour or time(23, 59), tzinfo=timezone.utc).timestamp()


def create_form(actor) -> None:
    datasets = list_datasets()
    if not datasets:
        st.caption("Upload a dataset on the Data page first; an assignment hands one out.")
        return
    by_id = {d["id"]: d for d in datasets}
    with st.form("instructor_create", enter_to_submit=False):
        dataset_id = st.selectbox("Dataset", list(by_id), format_func=lambda i: w.dataset_label(by_id[i]),
                                  key="instructor_dataset")
        name = st.text_input("Name", key="instructor_name", placeholder="e.g. Lab 3 - chest X-rays")
        hide = st.checkbox("Hide the test split from students until I release it", value=True, key="instructor_hide")
        cols = st.columns(4)
        limits = {key: cols[i].number_input(label, min_value=0, value=0, step=1, key=f"instructor_{key}",
                                            help="0: no limit")
                  for i, (key, label) in enumerate((("max_epochs", "Max epochs"), ("max_image_size", "Max image size"),
                                                    ("runs_per_student", "Runs per student"),
                                                    ("gpu_minutes", "Training minutes per student")))}
        cols = st.columns(2)
        day = cols[0].date_input("Deadline (UTC, optional)", value=None, key="instructor_deadline_day")
        hour = cols[1].time_input("at", value=time(23, 59), key="instructor_deadline_time")
        pressed = st.form_submit_button("Create the assignment", type="primary")
    if pressed:
        with w.shows_errors("Creating the assignment"):
            made = assignments.create_assignment(actor, dataset_id, name.strip(), hide_test=hide,
                                                 deadline=deadline_seconds(day, hour),
                                                 **{k: (int(v) if v else None) for k, v in limits.items()})
            st.session_state["instructor_notice"] = ("success", f"Created assignment {w.as_text(made['name'])}.")
            st.rerun()


st.title("Instructor")
actor = auth.page_actor()
if auth.is_student(actor):
    st.info("This page is for instructors.")
    st.stop()
notice = st.session_state.pop("instructor_notice", None)
if notice:
    getattr(st, notice[0])(notice[1])
with w.shows_errors("Reading the class"):
    people = users.list_users()
    runs = store.list_runs(limit=100_000)
    st.subheader("Class")
    if people:
        st.dataframe(pd.DataFrame(roster.class_rows(people, runs)), hide_index=True, key="instructor_class")
        st.caption("Queue share: each user's part of the runs queued or training now. The queue takes turns across "
                   "users, so one user's many runs do not hold back another's first.")
    else:
        st.caption("No accounts yet: `python -m engine user add NAME --role student`.")
    st.subheader("Assignments")
    found_all = assignments.list_assignments(actor)
    if not found_all:
        st.caption("No assignments yet; create one below.")
    for found in found_all:
        assignment_panel(actor, found, people)
    st.subheader("New assignment")
    create_form(actor)
