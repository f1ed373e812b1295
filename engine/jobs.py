"""The job queue: submit, claim, cancel, resume, crash recovery; and the worker that runs claimed jobs."""
from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import insert, select, update

from engine import settings, store
from engine.config import RunConfig
from engine.errors import UserError
from engine.store import jobs, runs, workers


def stale_seconds() -> float:
    """A running run whose heartbeat is older than this is taken for dead."""
    return float(os.environ.get("LIGHTBOX_STALE_SECONDS", 30))


HEARTBEAT_SECONDS = 2.0


# ---- queue ------------------------------------------------------------------------------------------------

def submit(config: RunConfig, study: str | None = None, trial: int | None = None) -> str:
    """Queue a new run; returns its id."""
    from engine.runner import create_run
    run_id = create_run(config, status="queued", study=study, trial=trial)
    _enqueue(run_id, resume=False)
    return run_id


def _enqueue(run_id: str, resume: bool) -> None:
    with store.db().begin() as conn:
        conn.execute(insert(jobs).values(run_id=run_id, status="queued", resume=resume, created_at=store.now()))


@dataclass
class Claim:
    job_id: int
    run_id: str
    resume: bool


def claim_next_job(worker_id: str) -> Claim | None:
    """Atomically take the oldest queued job. The conditional UPDATE makes a double claim impossible on
    SQLite and PostgreSQL alike; SKIP LOCKED keeps PostgreSQL workers from queueing behind each other."""
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
        if store.set_status(row.run_id, "running", only_if=("queued",)):
            store.update_run(row.run_id, worker=worker_id)
            return Claim(row.id, row.run_id, bool(row.resume))
        _finish_job(row.id)     # the run was cancelled while it waited
    return None


def _finish_job(job_id: int) -> None:
    with store.db().begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(status="finished"))


def cancel(run_id: str) -> str:
    """Stop a run: a queued run is cancelled at once, a running one at its next step boundary."""
    run = store.get_run(run_id)
    if run is None:
        raise UserError(f"There is no run '{run_id}'.")
    if run["status"] == "queued":
        if store.set_status(run_id, "cancelled", "Cancelled before it started.", only_if=("queued",)):
            with store.db().begin() as conn:
                conn.execute(update(jobs).where(jobs.c.run_id == run_id, jobs.c.status == "queued")
                             .values(status="finished"))
            return "cancelled"
    if run["status"] == "running":
        store.request_cancel(run_id)
        return "cancelling"
    return run["status"]


def resume(run_id: str) -> str:
    """Queue a stopped run again; it continues from its last finished epoch."""
    run = store.get_run(run_id)
    if run is None:
        raise UserError(f"There is no run '{run_id}'.")
    if run["status"] in store.ACTIVE:
        raise UserError(f"Run {run_id} is already {run['status']}.")
    if run["status"] == "done" and run["epoch"] >= run["epochs"]:
        raise UserError(f"Run {run_id} already finished all its epochs; start a new run to train longer.")
    if not store.set_status(run_id, "queued", "", only_if=store.FINISHED):
        raise UserError(f"Run {run_id} changed state meanwhile; try again.")
    store.update_run(run_id, cancel_requested=False)
    _enqueue(run_id, resume=True)
    return "queued"


def delete(run_id: str) -> str:
    """Delete a finished run: its store rows, checkpoints, sample pictures and log. Queued or running runs are
    refused (stop them first), so nothing a worker is writing disappears under it."""
    import shutil
    run = store.get_run(run_id)
    if run is None:
        raise UserError(f"There is no run '{run_id}'.")
    if run["status"] in store.ACTIVE:
        raise UserError(f"Run {run_id} is {run['status']}; stop it before deleting it.")
    if not store.delete_run(run_id):
        raise UserError(f"Run {run_id} changed state meanwhile; try again.")
    shutil.rmtree(settings.runs_dir() / run_id, ignore_errors=True)      # checkpoints, samples, train.log
    return "deleted"


def delete_dataset(dataset_id: str) -> str:
    """Delete an ingested dataset (its images, masks and caches). Refused while a queued or running run uses
    it; finished runs keep their results and checkpoints, and can still predict."""
    from engine.data.dataset import delete_dataset as remove_folder, load_manifest
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", dataset_id) or ".." in dataset_id:
        raise UserError(f"There is no dataset '{dataset_id}'.")        # and never a path outside the workspace
    load_manifest(dataset_id)                                           # a readable error when it does not exist
    busy = [r["id"] for r in store.list_runs(status=store.ACTIVE) if r["dataset_id"] == dataset_id]
    if busy:
        raise UserError(f"{len(busy)} run(s) queued or running use this dataset ({', '.join(busy[:3])}); "
                        "stop them before deleting it.")
    remove_folder(dataset_id)
    return "deleted"


def mark_stale_runs() -> list[str]:
    """Runs marked running whose process stopped heartbeating become 'interrupted' (resumable)."""
    limit = store.now() - stale_seconds()
    query = select(runs.c.id).where(runs.c.status == "running", runs.c.heartbeat_at < limit)
    with store.db().connect() as conn:
        stale = [r.id for r in conn.execute(query)]
    message = "The training process stopped unexpectedly (worker killed or out of memory); press Resume to continue."
    return [rid for rid in stale if store.set_status(rid, "interrupted", message, only_if=("running",))]


# ---- workers ----------------------------------------------------------------------------------------------

def live_workers() -> list[dict]:
    limit = store.now() - stale_seconds()
    query = select(workers).where(workers.c.heartbeat_at >= limit, workers.c.stopped.is_(False))
    with store.db().connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def ensure_worker() -> bool:
    """Start a background worker when none is alive (the app calls this). Returns True if it started one."""
    if live_workers():
        return False
    log = settings.home() / "logs"
    log.mkdir(exist_ok=True)
    with open(log / "worker.log", "ab") as out:
        subprocess.Popen([sys.executable, "-m", "engine", "worker"], stdout=out, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True, env=os.environ.copy())
    # Register a provisional heartbeat so that a rerun a moment later does not start a second worker.
    _register_worker(f"{socket.gethostname()}:starting", slots=0, device="starting")
    return True


def _register_worker(worker_id: str, slots: int, device: str) -> None:
    host, _, pid = worker_id.partition(":")
    with store.db().begin() as conn:
        conn.execute(workers.delete().where(workers.c.id.in_([worker_id, f"{host}:starting"])))
        conn.execute(insert(workers).values(id=worker_id, host=host, pid=int(pid) if pid.isdigit() else 0,
                                            slots=slots, device=device, started_at=store.now(),
                                            heartbeat_at=store.now(), stopped=False))


def _beat_worker(worker_id: str, stopped: bool = False) -> None:
    with store.db().begin() as conn:
        conn.execute(update(workers).where(workers.c.id == worker_id)
                     .values(heartbeat_at=store.now(), stopped=stopped))


def default_slots() -> int:
    import torch
    return max(1, torch.cuda.device_count())


def device_name() -> str:
    import torch
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"


def _die_with_parent() -> None:
    # Children must not outlive a killed worker: a run is either owned by a live worker or visibly interrupted.
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except OSError:
        pass


def _spawn(claim: Claim, gpu: int | None) -> subprocess.Popen:
    env = os.environ.copy()
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    log = settings.runs_dir() / claim.run_id
    log.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "engine", "run-job", claim.run_id] + (["--resume"] if claim.resume else [])
    with open(log / "train.log", "ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                preexec_fn=_die_with_parent)


def run_worker(slots: int | None = None, until_idle: bool = False, poll: float = 1.0) -> int:
    """Claim and run jobs, `slots` at a time, each in its own process. Returns the number of jobs run."""
    import torch
    slots = slots or default_slots()
    worker_id = f"{socket.gethostname()}:{os.getpid()}"
    _register_worker(worker_id, slots, device_name())
    children: dict[int, tuple[subprocess.Popen, Claim]] = {}
    gpus = torch.cuda.device_count()
    done = 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.is_set():
            _beat_worker(worker_id)
            mark_stale_runs()
            for slot, (proc, claim) in list(children.items()):
                if proc.poll() is not None:
                    _after_child(proc, claim)
                    del children[slot]
                    done += 1
            free = [s for s in range(slots) if s not in children]
            for slot in free:
                claim = claim_next_job(worker_id)
                if claim is None:
                    break
                children[slot] = (_spawn(claim, slot % gpus if gpus else None), claim)
            if until_idle and not children and not _queued_jobs():
                break
            stop.wait(poll)
    finally:
        for proc, claim in children.values():
            proc.terminate()
        for proc, claim in children.values():
            proc.wait(timeout=30)
            _after_child(proc, claim)
        _beat_worker(worker_id, stopped=True)
    return done


def _queued_jobs() -> int:
    with store.db().connect() as conn:
        return len(conn.execute(select(jobs.c.id).where(jobs.c.status == "queued").limit(1)).all())


def _after_child(proc: subprocess.Popen, claim: Claim) -> None:
    _finish_job(claim.job_id)
    if proc.returncode != 0:
        store.set_status(claim.run_id, "interrupted",
                         f"The training process ended abruptly (exit code {proc.returncode}); "
                         "if memory ran out, lower the batch or image size, then press Resume.",
                         only_if=("running",))


def heartbeat_thread(run_id: str, stop: threading.Event) -> threading.Thread:
    """Keeps a run's heartbeat fresh while its process lives, even during long cache builds or evaluation."""
    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                store.update_run(run_id, heartbeat_at=store.now())
            except Exception:  # noqa: BLE001 - a missed beat is harmless; the next one retries
                pass
    thread = threading.Thread(target=beat, daemon=True, name=f"heartbeat-{run_id}")
    thread.start()
    return thread


def run_job(run_id: str, resume: bool = False, on_trainer=None) -> dict:
    """Execute one claimed run in this process, with a heartbeat (worker children and `engine train`)."""
    from engine.runner import execute_run
    stop = threading.Event()
    heartbeat_thread(run_id, stop)
    try:
        return execute_run(run_id, resume=resume, on_trainer=on_trainer)
    finally:
        stop.set()


def worker_log(run_id: str) -> Path:
    return settings.runs_dir() / run_id / "train.log"
