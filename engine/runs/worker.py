"""The worker: claims queued runs and trains each in its own child process; heartbeats for runs and workers."""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading

from sqlalchemy import insert, select, update

from engine import workspace
from engine.device import device_name, gpu_count
from engine.models.checkpoints import write_failure
from engine.runs import queue, store
from engine.runs.paths import run_dir
from engine.runs.queue import Claim
from engine.runs.store import runs, workers


def live_workers() -> list[dict]:
    limit = store.now() - queue.stale_seconds()
    query = select(workers).where(workers.c.heartbeat_at >= limit, workers.c.stopped.is_(False))
    with store.db().connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def ensure_worker() -> bool:
    """Start a background worker when none is alive (the app calls this). Returns True if it started one."""
    if live_workers():
        return False
    log = workspace.home() / "logs"
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


def _die_with_parent() -> None:
    # Children must not outlive a killed worker: a run is either owned by a live worker or visibly interrupted.
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except OSError:
        pass


def visible_gpus(run_id: str, slot: int, gpus: int) -> str | None:
    """CUDA_VISIBLE_DEVICES for a run's process: its slot's GPU; a run on N devices (RunConfig.devices) sees N,
    starting at its slot's (other slots may share them: the worker counts runs, not GPUs)."""
    if not gpus:
        return None
    config = (store.get_run(run_id) or {}).get("config") or {}
    wanted = min(gpus, max(1, int(config.get("devices") or 1)))
    return ",".join(str((slot + i) % gpus) for i in range(wanted))


def _spawn(claim: Claim, gpus: str | None) -> subprocess.Popen:
    env = os.environ.copy()
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpus
    folder = run_dir(claim.run_id)
    folder.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "engine", "run-job", claim.run_id] + (["--resume"] if claim.resume else [])
    with open(folder / "train.log", "ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                preexec_fn=_die_with_parent)


def run_worker(slots: int | None = None, until_idle: bool = False, poll: float = 1.0) -> int:
    """Claim and run jobs, `slots` at a time, each in its own process. Returns the number of jobs run."""
    queue.max_running_per_user()        # a malformed per-user cap is refused before the worker registers
    gpus = gpu_count()
    slots = slots or max(1, gpus)
    worker_id = f"{socket.gethostname()}:{os.getpid()}"
    _register_worker(worker_id, slots, device_name())
    children: dict[int, tuple[subprocess.Popen, Claim]] = {}
    done = 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.is_set():
            _beat_worker(worker_id)
            _beat_children(children)
            queue.mark_stale_runs()
            _end_cancelled_starts(children)
            for slot, (proc, claim) in list(children.items()):
                if proc.poll() is not None:
                    _after_child(proc, claim)
                    del children[slot]
                    done += 1
            free = [s for s in range(slots) if s not in children]
            for slot in free:
                claim = queue.claim_next_job(worker_id)
                if claim is None:
                    break
                try:
                    children[slot] = (_spawn(claim, visible_gpus(claim.run_id, slot, gpus)), claim)
                except OSError as exc:      # its folder cannot be written: that run fails, the worker goes on
                    _spawn_failed(claim, exc)
            if until_idle and not children and not queue.queued_jobs():
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


def _beat_children(children: dict[int, tuple[subprocess.Popen, Claim]]) -> None:
    """A child still importing torch or loading data (under load: many seconds) has no heartbeat thread yet;
    its live process is proof enough, so the worker keeps its run fresh until the child's own beat takes over."""
    alive = [claim.run_id for proc, claim in children.values() if proc.poll() is None]
    if alive:
        with store.db().begin() as conn:
            conn.execute(update(runs).where(runs.c.id.in_(alive), runs.c.status.in_(store.STARTED))
                         .values(heartbeat_at=store.now()))


def _end_cancelled_starts(children: dict[int, tuple[subprocess.Popen, Claim]]) -> None:
    """A run cancelled while starting is already 'cancelled' in the store; its process (still importing or
    loading data, nothing to save yet) is ended here so the slot frees at once."""
    for proc, claim in children.values():
        if proc.poll() is None:
            run = store.get_run(claim.run_id)
            if run is not None and run["status"] == "cancelled":
                proc.kill()


def _spawn_failed(claim: Claim, exc: OSError) -> None:
    queue.finish_job(claim.job_id)
    store.set_status(claim.run_id, "failed", write_failure(run_dir(claim.run_id), exc, "the run's log"),
                     only_if=store.STARTED)


def _after_child(proc: subprocess.Popen, claim: Claim) -> None:
    queue.finish_job(claim.job_id)
    if proc.returncode != 0:
        store.set_status(claim.run_id, "interrupted",
                         f"The training process ended abruptly (exit code {proc.returncode}); "
                         "if memory ran out, lower the batch or image size, then press Resume.",
                         only_if=store.STARTED)
