"""The job queue in the store: enqueue, claim atomically in a fair order across users, finish; runs whose process
went silent become interrupted."""
from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import and_, func, insert, or_, select, text, update
from sqlalchemy.engine import Connection

from engine.errors import UserError, shown
from engine.runs import store
from engine.runs.store import jobs, runs, workers

# Any constant will do: claimers on PostgreSQL take this transaction-level advisory lock one at a time.
_CLAIM_LOCK = 0x4C42_5155


def stale_seconds() -> float:
    """A started run whose heartbeat is older than this is taken for dead."""
    return float(os.environ.get("LIGHTBOX_STALE_SECONDS", 30))


def max_running_per_user() -> int:
    """LIGHTBOX_MAX_RUNNING_PER_USER: how many runs one user may have starting or running at once (0 = no cap)."""
    value = os.environ.get("LIGHTBOX_MAX_RUNNING_PER_USER", "").strip() or "0"
    if not value.isdigit():
        raise UserError(f"LIGHTBOX_MAX_RUNNING_PER_USER is '{shown(value)}'; set it to a whole number of runs "
                        "per user (0 means no cap).")
    return int(value)


@dataclass
class Claim:
    job_id: int
    run_id: str
    resume: bool


@dataclass
class Queued:
    job_id: int
    run_id: str
    resume: bool
    owner: str | None
    capped: bool = False        # its owner had reached the per-user cap when its turn came


def enqueue(run_id: str, resume: bool) -> None:
    with store.db().begin() as conn:
        conn.execute(insert(jobs).values(run_id=run_id, status="queued", resume=resume, created_at=store.now()))


def fair_order(queued: list[Queued], running: dict, served: dict, cap: int = 0) -> list[Queued]:
    """The order in which queued jobs start if every slot that frees goes to the next one and nothing finishes:
    each turn goes to the owner with the fewest runs starting/running, then the one served least recently (never
    served first), then the oldest job. Owners at the cap come after everyone else. `queued` is oldest first;
    `running` and `served` (last claim time) are keyed by owner, None being the runs made without accounts."""
    pending: dict = {}
    for job in queued:
        pending.setdefault(job.owner, deque()).append(job)
    running, last = dict(running), {owner: (0, t) for owner, t in served.items()}
    order: list[Queued] = []

    def turn(owner) -> tuple:
        n = running.get(owner, 0)
        return (cap > 0 and n >= cap, n, last.get(owner, (0, float("-inf"))), pending[owner][0].job_id)

    while pending:
        owner = min(pending, key=turn)
        capped = turn(owner)[0]
        job = pending[owner].popleft()
        job.capped = capped
        order.append(job)
        running[owner] = running.get(owner, 0) + 1
        last[owner] = (1, len(order))           # served after every real claim, in this order
        if not pending[owner]:
            del pending[owner]
    return order


def _queue_state(conn: Connection, cap: int) -> list[Queued]:
    """The queued jobs in fair order, read through one connection (inside the claim lock when claiming)."""
    rows = conn.execute(select(jobs.c.id, jobs.c.run_id, jobs.c.resume, runs.c.owner)
                        .select_from(jobs.outerjoin(runs, runs.c.id == jobs.c.run_id))
                        .where(jobs.c.status == "queued").order_by(jobs.c.id)).all()
    if not rows:
        return []
    # A run counts as running from its claim: between the claim and 'starting' it is still 'queued' in lb_runs.
    claimed = select(jobs.c.run_id).where(jobs.c.status == "claimed")
    busy = or_(runs.c.status.in_(store.STARTED), and_(runs.c.status == "queued", runs.c.id.in_(claimed)))
    running = dict(conn.execute(select(runs.c.owner, func.count()).where(busy).group_by(runs.c.owner)).all())
    served = dict(conn.execute(select(runs.c.owner, func.max(jobs.c.claimed_at))
                               .select_from(jobs.join(runs, runs.c.id == jobs.c.run_id))
                               .where(jobs.c.claimed_at.is_not(None)).group_by(runs.c.owner)).all())
    return fair_order([Queued(r.id, r.run_id, bool(r.resume), r.owner) for r in rows], running, served, cap)


@contextmanager
def _claim_transaction() -> Iterator[Connection]:
    """A transaction that claimers enter one at a time, so each sees the claims made before it: a fair order
    needs the whole queue's state, not just one free row. SQLite: BEGIN IMMEDIATE takes the write lock before
    reading. PostgreSQL: a transaction-level advisory lock, released at commit."""
    eng = store.db()
    with eng.connect() as conn:
        if eng.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif eng.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CLAIM_LOCK})
        yield conn
        conn.commit()


def claim_next_job(worker_id: str) -> Claim | None:
    """Atomically take the next queued job in fair order (round-robin across owners, see fair_order), skipping
    owners at LIGHTBOX_MAX_RUNNING_PER_USER. The claim transaction is serialized and its UPDATE is conditional,
    so a double claim is impossible on SQLite and PostgreSQL alike. The run becomes 'starting' (not yet
    'running': its process still has to import torch and load data)."""
    cap = max_running_per_user()
    for _ in range(20):
        with _claim_transaction() as conn:
            order = _queue_state(conn, cap)
            if not order or order[0].capped:        # owners at the cap sort last: all of them are
                return None
            job = order[0]
            taken = conn.execute(update(jobs).where(jobs.c.id == job.job_id, jobs.c.status == "queued")
                                 .values(status="claimed", worker=worker_id, claimed_at=store.now())).rowcount
        if taken != 1:
            continue
        if store.set_status(job.run_id, "starting", only_if=("queued",)):
            store.update_run(job.run_id, worker=worker_id)
            return Claim(job.job_id, job.run_id, job.resume)
        finish_job(job.job_id)     # the run was cancelled while it waited
    return None


def queue_position(run_id: str) -> int | None:
    """1-based place of a queued run in the fair order (1 = starts when the next slot frees); None when the run
    is not waiting in the queue."""
    return queue_positions().get(run_id)


def queue_positions() -> dict[str, int]:
    """Every queued run's place in the fair order, from one read of the queue (a sidebar listing several runs)."""
    with store.db().connect() as conn:
        order = _queue_state(conn, max_running_per_user())
    places: dict[str, int] = {}
    for place, job in enumerate(order, 1):
        places.setdefault(job.run_id, place)
    return places


def finish_job(job_id: int) -> None:
    with store.db().begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(status="finished"))


def drop_queued_jobs(run_id: str) -> None:
    with store.db().begin() as conn:
        conn.execute(update(jobs).where(jobs.c.run_id == run_id, jobs.c.status == "queued").values(status="finished"))


def queued_jobs() -> int:
    with store.db().connect() as conn:
        return len(conn.execute(select(jobs.c.id).where(jobs.c.status == "queued").limit(1)).all())


def mark_stale_runs() -> list[str]:
    """Started runs whose process stopped heartbeating become 'interrupted' (resumable). What their dead worker
    left behind goes with them: the run's claimed job is finished, and workers that went silent are marked
    stopped (a worker killed with -9 never reaches its own clean-up)."""
    limit = store.now() - stale_seconds()
    query = select(runs.c.id).where(runs.c.status.in_(store.STARTED), runs.c.heartbeat_at < limit)
    with store.db().connect() as conn:
        stale = [r.id for r in conn.execute(query)]
    message = "The training process stopped unexpectedly (worker killed or out of memory); press Resume to continue."
    marked = [rid for rid in stale if store.set_status(rid, "interrupted", message, only_if=store.STARTED)]
    if marked:
        with store.db().begin() as conn:
            conn.execute(update(jobs).where(jobs.c.run_id.in_(marked), jobs.c.status == "claimed")
                         .values(status="finished"))
            conn.execute(update(workers).where(workers.c.stopped.is_(False), workers.c.heartbeat_at < limit)
                         .values(stopped=True))
    return marked
