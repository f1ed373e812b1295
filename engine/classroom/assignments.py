"""Assignments: a dataset an instructor hands out, with limits checked at submit and, optionally, a test split that
students do not see until it is released. Also the leaderboard of the hand-ins (engine.classroom.handins scores them).

No torch here: engine.accounts.access asks hidden_test_datasets() for every run it shows, from the queue commands
and the sidebar, which answer without loading torch.

Who sees what on a leaderboard (leaderboard()):
- the instructor and the operator (actor None): every student's standing hand-in with its score, by name (or by
  pseudonym, for showing it to the class);
- a student, once the test is visible (an assignment without a hidden test, or after release): the same table,
  everyone else under a pseudonym, themselves by name;
- a student while the test is hidden: only their own hand-in, with no score and no rank. A rank from the hidden
  test would let a student hand in run after run and keep the one the test liked: choosing on the test set.
Each student's latest hand-in is the one that stands (handing in again replaces the choice, never re-scores a run).
"""
from __future__ import annotations

import csv
import hashlib
import hmac
import json
import re
from datetime import datetime, timezone
from io import StringIO
from typing import Any

from sqlalchemy import Boolean, Column, Float, Integer, String, Table, Text, exc, func, insert, select, update
from sqlalchemy.engine import Connection

from engine import workspace
from engine.accounts.actor import Actor
from engine.data.manifest import load_manifest
from engine.errors import UserError, shown
from engine.runs import store
from engine.tasks import LOWER_IS_BETTER, TASK_METRICS

assignments = Table(
    "lb_assignments", store.metadata,
    Column("name", String(80), primary_key=True),
    Column("dataset_id", String(120), nullable=False, unique=True),   # one assignment per dataset: limits are clear
    Column("hide_test", Boolean, nullable=False, default=False),
    Column("released", Boolean, nullable=False, default=False),
    Column("max_epochs", Integer),
    Column("max_image_size", Integer),
    Column("runs_per_student", Integer),
    Column("gpu_minutes", Float),
    Column("deadline", Float),                                        # seconds since the epoch (UTC)
    Column("metric", String(40), nullable=False),                     # what the leaderboard ranks by
    Column("owner", String(80)),
    Column("created_at", Float, nullable=False),
)

handins = Table(
    "lb_handins", store.metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("assignment", String(80), nullable=False, index=True),
    Column("student", String(80), nullable=False),
    Column("run_id", String(40), nullable=False, unique=True),         # unique: a run is scored once, ever
    Column("score", Text),                                            # JSON: every test metric of the run
    Column("metric", String(40)),
    Column("value", Float),
    Column("scored_at", Float, nullable=False),
)

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,79}")
LIST_HINT = "`python -m engine assignment list` lists them"


def _db():
    return store.ensure_tables(assignments, handins)


def iso(seconds: float | None) -> str | None:
    """UTC ISO 8601 ("2026-11-30T06:00:00Z"), None for None."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_deadline(text: str) -> float:
    """An ISO 8601 date or date-time; without a time zone it is read as UTC."""
    try:
        moment = datetime.fromisoformat(str(text).strip())
    except ValueError:
        raise UserError(f"The deadline '{shown(text)}' is not a date; write it like 2026-12-01T18:00 (UTC) "
                        "or 2026-12-01T18:00+01:00.") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _require_instructor(actor: Actor | None, what: str) -> None:
    if actor is not None and not actor.is_instructor:
        raise UserError(f"Only an instructor can {what}; ask your instructor.")


def _public(row) -> dict:
    out = dict(row._mapping)
    out["deadline_iso"] = iso(out["deadline"])
    out["test_visible"] = not out["hide_test"] or bool(out["released"])
    return out


# ---- assignments ----------------------------------------------------------------------------------------------

def create_assignment(actor: Actor | None, dataset_id: str, name: str, hide_test: bool = False,
                      max_epochs: int | None = None, max_image_size: int | None = None,
                      runs_per_student: int | None = None, gpu_minutes: float | None = None,
                      deadline: float | None = None) -> dict:
    """Turn a dataset into an assignment (instructor only). Limits left None are not limits."""
    _require_instructor(actor, "create an assignment")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise UserError(f"'{shown(name)}' cannot name an assignment; use 1-80 letters, digits, spaces, '.', '_' "
                        "or '-', starting with a letter or digit.")
    manifest = load_manifest(dataset_id)            # an unknown or malformed id is refused in one line here
    for label, value, least in (("--max-epochs", max_epochs, 1), ("--max-image-size", max_image_size, 16),
                                ("--runs-per-student", runs_per_student, 1), ("--gpu-minutes", gpu_minutes, 0.1)):
        if value is not None and not value >= least:
            raise UserError(f"{label} must be at least {least}; leave it out for no limit.")
    if not any(s.get("split") == "test" for s in manifest.get("samples", [])):
        raise UserError(f"Dataset '{manifest.get('name', dataset_id)}' has no test images, so hand-ins could not be "
                        "scored; re-split it with a test split, then create the assignment.")
    eng = _db()
    with eng.begin() as conn:
        clash = conn.execute(select(assignments.c.name).where(
            (assignments.c.name == name) | (assignments.c.dataset_id == dataset_id))).first()
        if clash is not None:
            raise UserError(f"There is already an assignment '{clash.name}' with that name or dataset; "
                            "choose another name or dataset.")
        conn.execute(insert(assignments).values(
            name=name, dataset_id=dataset_id, hide_test=bool(hide_test), released=False, max_epochs=max_epochs,
            max_image_size=max_image_size, runs_per_student=runs_per_student, gpu_minutes=gpu_minutes,
            deadline=deadline, metric=TASK_METRICS[manifest["task"]][0],
            owner=actor.name if actor else None, created_at=store.now()))
    return get_assignment(name)


def get_assignment(name: str) -> dict:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise UserError(f"There is no assignment '{shown(name)}'; {LIST_HINT}.")
    with _db().connect() as conn:
        row = conn.execute(select(assignments).where(assignments.c.name == name)).first()
    if row is None:
        raise UserError(f"There is no assignment '{shown(name)}'; {LIST_HINT}.")
    return _public(row)


def assignment_for_dataset(dataset_id: str | None) -> dict | None:
    if not dataset_id:
        return None
    with _db().connect() as conn:
        row = conn.execute(select(assignments).where(assignments.c.dataset_id == dataset_id)).first()
    return _public(row) if row else None


def list_assignments(actor: Actor | None = None) -> list[dict]:
    """Every assignment (students need them to know their limits), newest first."""
    with _db().connect() as conn:
        rows = conn.execute(select(assignments).order_by(assignments.c.created_at.desc())).all()
    return [_public(r) for r in rows]


def release(actor: Actor | None, name: str) -> dict:
    """Show the test split's scores to the students (instructor only)."""
    _require_instructor(actor, "release an assignment's test results")
    get_assignment(name)
    with _db().begin() as conn:
        conn.execute(update(assignments).where(assignments.c.name == name).values(released=True))
    return get_assignment(name)


def hidden_test_datasets() -> set[str]:
    """Ids of datasets whose test split students may not see now (a hidden test, not yet released)."""
    query = select(assignments.c.dataset_id).where(assignments.c.hide_test.is_(True),
                                                   assignments.c.released.is_(False))
    with _db().connect() as conn:
        return {row.dataset_id for row in conn.execute(query)}


def hides_test_from(actor: Actor | None, dataset_id: str | None) -> bool:
    """Whether this actor may not see test values of runs on this dataset now."""
    return actor is not None and not actor.is_instructor and dataset_id in hidden_test_datasets()


# ---- limits ---------------------------------------------------------------------------------------------------

def _setting(config: Any, key: str) -> Any:
    return config.get(key) if isinstance(config, dict) else getattr(config, key, None)


def preset_limits(actor: Actor | None, dataset_id: str) -> dict | None:
    """The limits a preset (engine.presets.auto_settings) keeps a student's settings within, so that Auto fills
    a form the assignment accepts: {"assignment", "max_epochs", "max_image_size"}; None for anyone else."""
    if actor is None or actor.is_instructor:
        return None
    found = assignment_for_dataset(dataset_id)
    if found is None:
        return None
    return {"assignment": found["name"], "max_epochs": found["max_epochs"], "max_image_size": found["max_image_size"]}


def check_submission(actor: Actor | None, config: Any, count: int = 1, conn: Connection | None = None) -> None:
    """Refuse, in one sentence, a student's run that breaks a limit of the assignment on its dataset.

    Checked before the run is recorded, so the run being submitted is not yet counted. `count` runs are asked for
    at once (count > 1: the folds of one cross-validation, all of which must fit). For the check to hold when
    one student submits twice at once, run it and the insert in store.exclusive(...) and pass its `conn`
    (engine.runs.submit.create_runs does)."""
    if actor is None or actor.is_instructor:
        return
    found = assignment_for_dataset(_setting(config, "dataset_id"))
    if found is None:
        return
    name = found["name"]
    if found["deadline"] is not None and store.now() > found["deadline"]:
        raise UserError(f"The deadline of assignment '{name}' passed at {found['deadline_iso']}; "
                        "no more runs can be submitted for it.")
    for key, limit, label in (("epochs", "max_epochs", "Epochs"), ("image_size", "max_image_size", "Image size")):
        value = _setting(config, key)
        if found[limit] is not None and value is not None and value > found[limit]:
            raise UserError(f"Assignment '{name}' allows {label} up to {found[limit]}, not {value}; "
                            f"set {label} to {found[limit]} or less.")
    runs, seconds = _student_usage(actor.name, found["dataset_id"], conn)
    limit = found["runs_per_student"]
    if limit is not None and runs + count > limit:
        left = max(0, limit - runs)
        if count == 1 or left == 0:
            raise UserError(f"You have used all {limit} runs that assignment '{name}' allows; "
                            "hand in one of your runs.")
        if (_setting(config, "folds") or 0) >= 2:
            what = f"cross-validation with {count} folds"
            advice = f"Set Folds to {left} or fewer." if left >= 2 else "Train a single run (Folds 1) instead."
        else:                           # the other job of several runs: a learning curve
            what, advice = f"a learning curve of {count} training-set sizes", "Train a single run instead."
        raise UserError(f"Assignment '{name}' allows {limit} runs per student: {what} needs {count} runs; "
                        f"you have {left} left. {advice}")
    if found["gpu_minutes"] is not None and seconds / 60 >= found["gpu_minutes"]:
        raise UserError(f"You have used your {found['gpu_minutes']:g} training minutes for assignment '{name}'; "
                        "hand in one of your runs.")


def student_usage(student: str, dataset_id: str) -> tuple[int, float]:
    """Runs a student made on a dataset and their training seconds, as the limits count them (deleted runs
    included): what a page showing a student's use of an assignment's limits should show."""
    return _student_usage(student, dataset_id)


def _student_usage(student: str, dataset_id: str, conn: Connection | None = None) -> tuple[int, float]:
    """Runs a student made on a dataset and their training seconds: any status (a failed run used its place
    too), deleted ones included (store.spent_runs), so deleting never gives a place or a minute back."""
    if conn is None:
        with store.db().connect() as own:
            return _student_usage(student, dataset_id, own)
    totals = [conn.execute(select(func.count(), func.coalesce(func.sum(table.c.train_seconds), 0.0))
                           .where(table.c.owner == student, table.c.dataset_id == dataset_id)).one()
              for table in (store.runs, store.spent_runs)]
    return sum(int(count) for count, _ in totals), sum(float(seconds or 0.0) for _, seconds in totals)


# ---- hand-ins and the leaderboard -----------------------------------------------------------------------------

def record_handin(assignment: dict, student: str, run_id: str, score: dict) -> dict:
    """Store a scored hand-in; a run handed in before is refused (the unique run_id makes this atomic)."""
    metric = assignment["metric"]
    value = score.get(metric)
    row = dict(assignment=assignment["name"], student=student, run_id=run_id, score=json.dumps(score),
               metric=metric, value=float(value) if isinstance(value, (int, float)) else None, scored_at=store.now())
    try:
        with _db().begin() as conn:
            row["id"] = conn.execute(insert(handins).values(**row)).inserted_primary_key[0]
    except exc.IntegrityError as err:
        if handin_of_run(run_id) is not None:
            raise already_handed_in(run_id) from err
        raise
    row["score"] = score
    return row


def already_handed_in(run_id: str) -> UserError:
    return UserError(f"Run {run_id} was already handed in and scored; a run is scored only once, so train "
                     "another run to hand in something new.")


def handin_of_run(run_id: str) -> dict | None:
    with _db().connect() as conn:
        row = conn.execute(select(handins).where(handins.c.run_id == run_id)).first()
    return _handin(row) if row else None


def _handin(row) -> dict:
    out = dict(row._mapping)
    out["score"] = json.loads(out["score"]) if out["score"] else None
    out["scored_at_iso"] = iso(out["scored_at"])
    return out


def standing_handins(name: str) -> list[dict]:
    """Each student's latest hand-in of an assignment."""
    with _db().connect() as conn:
        rows = conn.execute(select(handins).where(handins.c.assignment == name).order_by(handins.c.id)).all()
    latest = {row.student: row for row in rows}
    return [_handin(row) for row in latest.values()]


def pseudonym(assignment: str, student: str) -> str:
    """A stable name that does not reveal the student (keyed with the workspace's secret)."""
    digest = hmac.new(workspace.secret_key(), f"{assignment}\0{student}".encode(), hashlib.sha256).hexdigest()
    return f"student-{digest[:6]}"


def leaderboard(actor: Actor | None, name: str, pseudonyms: bool = False) -> list[dict]:
    """Ranked rows {rank, student, run_id, metric, value, handed_in_at}; what a student sees: module docstring."""
    found = get_assignment(name)
    rows = standing_handins(name)
    student = actor is not None and not actor.is_instructor
    if student and not found["test_visible"]:
        return [{"rank": None, "student": actor.name, "run_id": r["run_id"], "metric": found["metric"],
                 "value": None, "handed_in_at": r["scored_at_iso"]} for r in rows if r["student"] == actor.name]
    lower = found["metric"] in LOWER_IS_BETTER
    scored = sorted((r for r in rows if r["value"] is not None), key=lambda r: r["value"], reverse=not lower)
    board = []
    for r in scored + [r for r in rows if r["value"] is None]:
        own = student and r["student"] == actor.name
        hide = pseudonyms or (student and not own)
        board.append({"rank": None if r["value"] is None else len(board) + 1,
                      "student": pseudonym(name, r["student"]) if hide else r["student"],
                      "run_id": r["run_id"] if own or not student else None,
                      "metric": r["metric"], "value": r["value"], "handed_in_at": r["scored_at_iso"]})
    return board


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula (=, +, -, @, tab, CR first) gets a leading quote."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def leaderboard_csv(actor: Actor | None, name: str, pseudonyms: bool = False) -> str:
    """The leaderboard as CSV text, safe to open in a spreadsheet."""
    columns = ["rank", "student", "run_id", "metric", "value", "handed_in_at"]
    buffer = StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for row in leaderboard(actor, name, pseudonyms):
        writer.writerow([csv_cell("" if row[c] is None else row[c]) for c in columns])
    return buffer.getvalue()
