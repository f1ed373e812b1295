"""The job queue in the store: enqueue, claim atomically, finish; runs whose process went silent become interrupted."""
from __future__ import annotations

import os
from dataclasses import dataclass

from sqlalchemy import insert, select, update

from engine.runs import store
from engine.runs.store import jobs, runs, workers


def stale_seconds() -> float:
    """A started run whose heartbeat is older than this is taken for dead."""
    return float(os.environ.get("LIGHTBOX_STALE_SECONDS", 30))


@dataclass
class Claim:
    job_id: int
    run_id: str
    resume: bool


def enqueue(run_id: str, resume: bool) -> None:
    with store.db().begin() as conn:
        conn.execute(insert(jobs).values(run_id=run_id, status="queued", resume=resume, created_at=store.now()))


def claim_next_job(worker_id: str) -> Claim | None:
    """Atomically take the oldest queued job. The conditional UPDATE makes a double claim impossible on
    SQLite and PostgreSQL alike; SKIP LOCKED keeps PostgreSQL workers from queueing behind each other.
    The run becomes 'starting' (not yet 'running': its process still has to import torch and load data)."""
    eng = store.db()
    for _ in range(20):
        with eng.begin() as conn:
            query = select(jobs.c.id, jobs.c.run_id, jobs.c.resume).where(jobs.c.status == "queued")
            query = query.order_by(jobs.c.id).limit(1)
            if eng.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            row = conn.execute(query).first()
            if row is None:
                return None
            taken = conn.execute(update(jobs).where(jobs.c.id == row.id, jobs.c.status == "queued")
                                 .values(status="claimed", worker=worker_id, claimed_at=store.now())).rowcount
        if taken != 1:
            continue
        if store.set_status(row.run_id, "starting", only_if=("queued",)):
            store.update_run(row.run_id, worker=worker_id)
            return Claim(row.id, row.run_id, bool(row.resume))
        finish_job(row.id)     # the run was cancelled while it waited
    return None


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
