"""The run store: runs, metrics, jobs and workers in one SQLAlchemy database (SQLite or PostgreSQL)."""
from __future__ import annotations

import json
import re
import secrets
import sys
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Iterable

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    create_engine,
    event,
    exc,
    func,
    insert,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine

from engine import workspace
from engine.errors import UserError, shown

metadata = MetaData()

runs = Table(
    "lb_runs", metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), default=""),
    Column("dataset_id", String(120), nullable=False),
    Column("arch", String(60), nullable=False),
    Column("task", String(20), nullable=False),
    Column("config", Text, nullable=False),
    Column("status", String(20), nullable=False, index=True),   # queued starting running done failed cancelled interrupted pruned
    Column("message", Text, default=""),                        # user-facing reason for failed/cancelled/interrupted
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("heartbeat_at", Float),
    Column("worker", String(120)),
    Column("epoch", Integer, default=0),                        # epochs completed
    Column("epochs", Integer, default=0),
    Column("progress", Float, default=0.0),                     # 0..1 over the whole run
    Column("best_metric", String(40)),
    Column("best_value", Float),
    Column("best_epoch", Integer),
    Column("best", Text),                                       # JSON: all validation metrics at the best epoch
    Column("test", Text),                                       # JSON: held-out test-split metrics
    Column("params", Integer),
    Column("train_seconds", Float, default=0.0),
    Column("cancel_requested", Boolean, default=False),
    Column("attempts", Integer, default=0),
    Column("study", String(200)),
    Column("trial", Integer),
    Column("owner", String(80)),                                # user name; None = made in single-user mode
)

metrics = Table(
    "lb_metrics", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(40), nullable=False, index=True),
    Column("epoch", Integer, nullable=False),
    Column("step", Integer, nullable=False),
    Column("split", String(10), nullable=False),                # train | val | test
    Column("name", String(60), nullable=False),
    Column("value", Float),
    Column("time", Float, nullable=False),
)

jobs = Table(
    "lb_jobs", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(40), nullable=False, index=True),
    Column("status", String(20), nullable=False, index=True),   # queued claimed finished
    Column("resume", Boolean, default=False),
    Column("worker", String(120)),
    Column("created_at", Float, nullable=False),
    Column("claimed_at", Float),
)

workers = Table(
    "lb_workers", metadata,
    Column("id", String(120), primary_key=True),                # host:pid
    Column("host", String(100)),
    Column("pid", Integer),
    Column("slots", Integer),
    Column("device", String(100)),
    Column("started_at", Float),
    Column("heartbeat_at", Float),
    Column("stopped", Boolean, default=False),
)

# A deleted run's owner, dataset and training time: an assignment's runs-per-student places and GPU minutes stay
# spent after a delete (engine.classroom.assignments counts these rows with the runs).
spent_runs = Table(
    "lb_spent_runs", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(40), nullable=False),
    Column("owner", String(80), nullable=False, index=True),
    Column("dataset_id", String(120), nullable=False),
    Column("train_seconds", Float, nullable=False, default=0.0),
    Column("deleted_at", Float, nullable=False),
)

# "starting": a worker claimed the run and its process is importing and loading data; "running" from its first step.
ACTIVE = ("queued", "starting", "running")
STARTED = ("starting", "running")
FINISHED = ("done", "failed", "cancelled", "interrupted", "pruned")


def now() -> float:
    return time.time()


def new_run_id() -> str:
    """Time-sortable and unique: 32 random bits after the second (16 bits collided about once in 40 when 60 runs
    were queued within one second, as a class or a search does; now about once in ten million)."""
    return datetime.now(timezone.utc).strftime("%m%d-%H%M%S-") + secrets.token_hex(4)


# What an id may look like: new_run_id's alphabet (digits, hex, '-'; letters and '_' for ids made by hand or by
# older versions), at most the column's 40 characters, no dot and no slash — so never a path, never too long.
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")


def is_run_id(value: object) -> bool:
    return isinstance(value, str) and RUN_ID.fullmatch(value) is not None


def no_such_run(run_id: object) -> UserError:
    return UserError(f"There is no run '{shown(run_id)}'; `python -m engine runs` lists the runs.")


def require_run(run_id: object) -> dict:
    """The stored run with this id; a malformed or unknown id (a path, 100 KB of text) is refused in one line."""
    run = get_run(run_id) if is_run_id(run_id) else None
    if run is None:
        raise no_such_run(run_id)
    return run


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL lets the UI read while a trainer writes; busy_timeout waits out short write locks instead of failing.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


@lru_cache(maxsize=4)
def engine_for(url: str) -> Engine:
    """One SQLAlchemy engine per URL per process; tables are created on first use."""
    if url.startswith("sqlite"):
        eng = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(eng, "connect", _sqlite_pragmas)
    else:
        eng = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
    _create_tables(eng)
    add_missing_columns(eng)
    return eng


def _create_tables(eng: Engine, attempts: int = 8, tables: list[Table] | None = None) -> None:
    """Create missing tables, tolerating another process doing the same at the same moment.

    `create_all` checks first, but two processes starting together (a worker and a search, or two workers) can
    both see a table missing and the slower one then fails with "already exists". Retrying is enough: the next
    check sees the tables the other process made.
    """
    for attempt in range(attempts):
        try:
            metadata.create_all(eng, tables=tables)
            return
        except (exc.OperationalError, exc.ProgrammingError, exc.IntegrityError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def add_missing_columns(eng: Engine, tables: list[Table] | None = None) -> None:
    """The tiny migration: a workspace made by an older Lightbox lacks columns added since (runs.owner); add
    them, nullable, so old rows read as "no value". Idempotent, and safe when two processes do it at once."""
    for table in tables or metadata.sorted_tables:
        for _ in range(4):
            found = inspect(eng)
            if not found.has_table(table.name):
                break
            have = {c["name"] for c in found.get_columns(table.name)}
            missing = [c for c in table.columns if c.name not in have]
            if not missing:
                break
            try:
                with eng.begin() as conn:
                    for column in missing:
                        kind = column.type.compile(dialect=eng.dialect)
                        conn.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}')
            except (exc.OperationalError, exc.ProgrammingError):
                time.sleep(0.05)                # another process added it first: look again


_READY: set[tuple[str, str]] = set()


def ensure_tables(*tables: Table) -> Engine:
    """The store's engine with these tables (declared on `metadata` by modules outside the store: users,
    assignments) created and migrated; cheap after the first call per process."""
    eng = db()
    todo = [t for t in tables if (str(eng.url), t.name) not in _READY]
    if todo:
        _create_tables(eng, tables=todo)
        add_missing_columns(eng, todo)
        _READY.update((str(eng.url), t.name) for t in todo)
    return eng


def db() -> Engine:
    return engine_for(workspace.db_url())


def _row(row) -> dict[str, Any]:
    out = dict(row._mapping)
    for key in ("config", "best", "test"):
        if key in out and out[key]:
            out[key] = json.loads(out[key])
    return out


# Any constant will do: the first key of the two-key PostgreSQL advisory locks that exclusive() takes.
_EXCLUSIVE_SPACE = 0x4C42_5855


@contextmanager
def exclusive(name: str) -> Iterator[Connection]:
    """A transaction that callers naming the same thing (e.g. one student's submissions) enter one at a time, so a
    check followed by a write cannot be overtaken. SQLite: BEGIN IMMEDIATE takes the database's write lock
    before reading (every writer waits, briefly). PostgreSQL: a transaction-level advisory lock on the name,
    released at commit or rollback. Write through the yielded connection: another one would wait on this lock."""
    eng = db()
    with eng.connect() as conn:
        if eng.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif eng.dialect.name == "postgresql":
            key = zlib.crc32(name.encode()) - 2 ** 31                  # a signed 32-bit integer
            conn.execute(text("SELECT pg_advisory_xact_lock(CAST(:space AS integer), CAST(:key AS integer))"),
                         {"space": _EXCLUSIVE_SPACE, "key": key})
        yield conn
        conn.commit()


# ---- runs -------------------------------------------------------------------------------------------------

def insert_run(config: dict, *, status: str = "queued", params: int | None = None, study: str | None = None,
               trial: int | None = None, owner: str | None = None, conn: Connection | None = None) -> str:
    """Record a run row as given (no checks: engine.runs.submit.create_run validates first); with `conn`, inside
    that connection's transaction (the caller commits)."""
    if conn is None:
        with db().begin() as own:
            return insert_run(config, status=status, params=params, study=study, trial=trial, owner=owner, conn=own)
    run_id = new_run_id()
    started = now() if status in STARTED else None     # `engine train` runs start at once
    conn.execute(insert(runs).values(
        id=run_id, name=config.get("name", ""), dataset_id=config["dataset_id"], arch=config["arch"],
        task=config["task"], config=json.dumps(config), status=status, created_at=now(),
        epochs=config.get("epochs", 0), params=params, study=study, trial=trial, owner=owner, message="",
        started_at=started, heartbeat_at=started,
        epoch=0, progress=0.0, cancel_requested=False, attempts=0, train_seconds=0.0))
    return run_id


def get_run(run_id: str) -> dict | None:
    with db().connect() as conn:
        row = conn.execute(select(runs).where(runs.c.id == run_id)).first()
    return _row(row) if row else None


def list_runs(status: Iterable[str] | None = None, limit: int = 500, study: str | None = None,
              owner: str | None = None) -> list[dict]:
    """Newest first; `owner` keeps one user's runs (None: everyone's)."""
    query = select(runs).order_by(runs.c.created_at.desc()).limit(limit)
    if status:
        query = query.where(runs.c.status.in_(list(status)))
    if study:
        query = query.where(runs.c.study == study)
    if owner is not None:
        query = query.where(runs.c.owner == owner)
    with db().connect() as conn:
        return [_row(r) for r in conn.execute(query)]


def replan_epochs(run_id: str, epochs: int, note: dict) -> None:
    """An Auto run re-planned its epochs (engine.training.handlers.replan): the stored settings say so, so the
    Monitor's progress, a resume and the run's record use the new length."""
    config = require_run(run_id)["config"]
    config["epochs"] = epochs
    preset = config.get("preset") or {}
    if preset:
        preset.setdefault("values", {})["epochs"] = epochs
        earlier = preset.get("replanned") or {}
        # the latest re-plan, the probe's plan and the count so far: a resumed process carries them on
        preset["replanned"] = {**note, "first_epochs": earlier.get("first_epochs", note.get("from_epochs")),
                               "times": int(earlier.get("times") or 0) + 1}
    update_run(run_id, epochs=epochs, config=json.dumps(config))


def update_run(run_id: str, **values: Any) -> None:
    for key in ("best", "test"):
        if key in values and not isinstance(values[key], (str, type(None))):
            values[key] = json.dumps(values[key])
    with db().begin() as conn:
        conn.execute(update(runs).where(runs.c.id == run_id).values(**values))


def set_status(run_id: str, status: str, message: str = "", *, only_if: Iterable[str] | None = None) -> bool:
    """Move a run to a status; with only_if, only from those statuses. Returns whether a row changed."""
    values: dict[str, Any] = {"status": status, "message": message}
    if status == "starting":
        values["started_at"] = now()
    elif status == "running":                     # straight from queued (no 'starting'): it starts now
        values["started_at"] = func.coalesce(runs.c.started_at, now())
    if status in STARTED:
        values["heartbeat_at"] = now()
    if status in FINISHED:
        values["finished_at"] = now()
    query = update(runs).where(runs.c.id == run_id)
    if only_if:
        query = query.where(runs.c.status.in_(list(only_if)))
    with db().begin() as conn:
        return conn.execute(query.values(**values)).rowcount == 1


def request_cancel(run_id: str) -> None:
    with db().begin() as conn:
        conn.execute(update(runs).where(runs.c.id == run_id).values(cancel_requested=True))


def delete_run(run_id: str) -> bool:
    """Remove a finished run with its metrics and queue rows; False when it is missing or queued/running.

    The conditional DELETE is the guard: a run that a worker or a resume picks up meanwhile is left alone. A run
    with an owner leaves a spent_runs row in the same transaction: its place and training time stay counted.
    """
    with db().begin() as conn:
        gone = conn.execute(runs.delete().where(runs.c.id == run_id, runs.c.status.in_(FINISHED))
                            .returning(runs.c.owner, runs.c.dataset_id, runs.c.train_seconds)).first()
        if gone is not None:
            conn.execute(metrics.delete().where(metrics.c.run_id == run_id))
            conn.execute(jobs.delete().where(jobs.c.run_id == run_id))
            if gone.owner is not None:
                conn.execute(insert(spent_runs).values(run_id=run_id, owner=gone.owner, dataset_id=gone.dataset_id,
                                                       train_seconds=gone.train_seconds or 0.0, deleted_at=now()))
    return gone is not None


def run_counts() -> dict[str, int]:
    with db().connect() as conn:
        rows = conn.execute(select(runs.c.status, func.count()).group_by(runs.c.status)).all()
    return {status: count for status, count in rows}


# ---- metrics ----------------------------------------------------------------------------------------------

def log_metrics(run_id: str, rows: list[tuple[int, int, str, str, float]]) -> None:
    """rows: (epoch, step, split, name, value)."""
    if not rows:
        return
    t = now()
    with db().begin() as conn:
        conn.execute(insert(metrics), [
            {"run_id": run_id, "epoch": e, "step": s, "split": sp, "name": n,
             "value": None if v is None or v != v else float(v), "time": t}
            for e, s, sp, n, v in rows])


def get_metrics(run_id: str, after_id: int = 0) -> list[dict]:
    query = (select(metrics).where(metrics.c.run_id == run_id, metrics.c.id > after_id)
             .order_by(metrics.c.id))
    with db().connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def get_metrics_many(run_ids: list[str]) -> list[dict]:
    query = select(metrics).where(metrics.c.run_id.in_(run_ids)).order_by(metrics.c.id)
    with db().connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def epoch_metrics_many(run_ids: list[str]) -> dict[str, list[dict]]:
    """Each run's metric rows in one query, without the per-step training losses (the bulk of the table)
    except those that are NaN (stored as null) or infinite, which say that a run diverged."""
    if not run_ids:
        return {}
    step_loss = and_(metrics.c.split == "train", metrics.c.name == "loss")
    finite = metrics.c.value.between(-sys.float_info.max, sys.float_info.max)
    query = (select(metrics).where(metrics.c.run_id.in_(list(run_ids)),
                                   or_(~step_loss, metrics.c.value.is_(None), ~finite))
             .order_by(metrics.c.id))
    out: dict[str, list[dict]] = {run_id: [] for run_id in run_ids}
    with db().connect() as conn:
        for row in conn.execute(query):
            out[row.run_id].append(dict(row._mapping))
    return out


def delete_metrics_after(run_id: str, epoch: int) -> None:
    """Forget rows logged after the last checkpointed epoch so a resume never duplicates an epoch."""
    with db().begin() as conn:
        conn.execute(metrics.delete().where(metrics.c.run_id == run_id, metrics.c.epoch > epoch))
