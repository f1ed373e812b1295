"""The Ray executor: the worker claims runs from the store exactly as the embedded worker does, and runs each
as a Ray task that asks the cluster for the run's resources (a GPU when the run trains on CUDA, a CPU otherwise).

Inside the task, the same `python -m engine run-job RUN_ID [--resume]` child process as the embedded worker's
does the training: torch state stays isolated per run, a Ray worker process never imports torch, and status,
metrics, checkpoints and heartbeats reach the store by exactly the path the embedded worker uses. The store stays
the one source of truth; Ray only places and supervises the processes.

A task whose node or process is lost (Ray reports a system error, or the run's process is killed by a signal)
leaves its run interrupted and queues it again with resume=True, up to MAX_LOST_RETRIES times; after that the run
stays interrupted with a sentence saying so. Ray itself never retries a task (max_retries=0): a rerun must resume
from the last checkpoint, which only the store knows about.

Ray is an optional extra (requirements-ray.txt, `make ray`); this module imports it only when the worker starts."""
from __future__ import annotations

import os
import signal
import socket
import threading
import warnings
from typing import Any

from sqlalchemy import update

from engine import workspace
from engine.device import gpu_count
from engine.errors import UserError, one_line, shown
from engine.runs import queue, store
from engine.runs.queue import Claim
from engine.runs.ray_task import REPO_ROOT, run_job_process
from engine.runs.store import runs
from engine.runs.worker import _beat_worker, _register_worker

MAX_LOST_RETRIES = 2
NOT_INSTALLED = "Ray is not installed; `make ray` (or pip install -r requirements-ray.txt) adds it."


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(NOT_INSTALLED) from None
    return ray


# ---- what the worker (the Ray driver) does -----------------------------------------------------------------

def task_env() -> dict[str, str]:
    """What a task on any node needs to reach the same workspace and store: every LIGHTBOX_ setting of this
    process, LIGHTBOX_HOME made absolute, and the code's folder on PYTHONPATH (same path on every node)."""
    env = {k: v for k, v in os.environ.items() if k.startswith("LIGHTBOX_")}
    env["LIGHTBOX_HOME"] = str(workspace.home())
    env.setdefault("LIGHTBOX_CODE", str(REPO_ROOT))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env["LIGHTBOX_CODE"], os.environ.get("PYTHONPATH", "")) if p)
    return env


def run_resources(config: dict, cluster: dict) -> dict[str, Any]:
    """The Ray resources one run asks for: GPUs when its device resolves to CUDA on this cluster (the config's
    device is 'cuda', or 'auto' and the cluster has GPUs), one CPU otherwise. `devices` (N GPUs for one run,
    item 2 of issue 16) is read here already: a run asking for N GPUs is placed on a node that has N free."""
    device = config.get("device", "auto")
    gpus_in_cluster = cluster.get("GPU", 0)
    if device in ("cuda", "auto") and gpus_in_cluster >= 1:
        return {"num_cpus": 1, "num_gpus": max(1, int(config.get("devices") or 1))}
    return {"num_cpus": 1}


def default_slots(cluster: dict, nodes: int) -> int:
    """How many runs the worker keeps in the cluster at once when --slots is not given: one per GPU, or one per
    node on a CPU-only cluster (a CPU run's torch uses every core of its node, as with the embedded worker)."""
    return max(1, int(cluster.get("GPU", 0)) or nodes)


def connect(ray, address: str | None, slots: int | None) -> bool:
    """Connect to the cluster at `address`, or start a local Ray instance with CPUs for `slots` tasks at once (the
    worker's runs, a search's trials). Returns True when this call started or connected Ray (and the caller shuts
    it down at its end); False when this process was already connected."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray's tip about a future change of how it hides GPUs from tasks that ask for none (a CPU run never
    # sees a GPU, today and after it): not the user's business.
    warnings.filterwarnings("ignore", message="Tip: In future versions of Ray")
    try:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        else:
            # as many CPUs as runs may train at once (each task asks for one, a GPU run too), and no more: Ray
            # starts no worker processes it would not use. address="local": a new instance, even where a `ray
            # start` left its address file behind (plain init would try that cluster, dead or not, and refuse
            # num_cpus).
            ray.init(address="local", num_cpus=max(1, slots or 1, gpu_count()), include_dashboard=False,
                     log_to_driver=False, logging_level="ERROR")
    except ConnectionError:
        raise UserError(f"No Ray cluster answered at '{shown(address or 'local')}'; start one with `ray start "
                        "--head` on the head node, or check --address.") from None
    return True


class RayWorker:
    """One worker process driving runs on a Ray cluster. `run` loops like engine.runs.worker.run_worker."""

    def __init__(self, ray, slots: int | None, poll: float):
        self.ray = ray
        cluster = ray.cluster_resources()
        self.cluster = cluster
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        self.slots = slots or default_slots(cluster, nodes)
        self.poll = poll
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.device = f"Ray: {nodes} node(s), {cluster.get('CPU', 0):g} CPU, {cluster.get('GPU', 0):g} GPU"
        self.inflight: dict[Any, Claim] = {}         # ObjectRef -> the claim its task runs
        self.cancelled: set = set()                  # refs already ray.cancel-led
        self.lost: dict[str, int] = {}               # run id -> retries after a lost node, in this worker's life
        self.done = 0
        self.remote = ray.remote(max_retries=0, retry_exceptions=False)(run_job_process)

    def submit(self, claim: Claim) -> None:
        run = store.require_run(claim.run_id)
        self.cluster = self.ray.cluster_resources()     # GPU nodes may have joined (or left) since the last run
        options = run_resources(run["config"] or {}, self.cluster)
        ref = self.remote.options(**options, runtime_env={"env_vars": task_env()}).remote(claim.run_id,
                                                                                            claim.resume)
        self.inflight[ref] = claim

    def beat_runs(self) -> None:
        """A pending task (waiting for a free GPU) or a child still importing torch has no heartbeat of its own:
        while Ray holds its task, the worker keeps the run fresh (as _beat_children does for the embedded one)."""
        alive = [c.run_id for c in self.inflight.values()]
        if alive:
            with store.db().begin() as conn:
                conn.execute(update(runs).where(runs.c.id.in_(alive), runs.c.status.in_(store.STARTED))
                             .values(heartbeat_at=store.now()))

    def cancel_cancelled(self) -> None:
        """A run cancelled while pending or starting is already 'cancelled' in the store: its task is cancelled
        in Ray (a pending one never starts; a starting one's process ends at once). A running run stops itself
        at its next step boundary (the trainer polls the store), as with the embedded worker."""
        for ref, claim in self.inflight.items():
            if ref in self.cancelled:
                continue
            run = store.get_run(claim.run_id)
            if run is None or run["status"] == "cancelled":
                self.ray.cancel(ref, force=True)
                self.cancelled.add(ref)

    def collect(self) -> None:
        if not self.inflight:
            return
        ready, _ = self.ray.wait(list(self.inflight), num_returns=len(self.inflight), timeout=0)
        for ref in ready:
            claim = self.inflight.pop(ref)
            self.cancelled.discard(ref)
            self.finished(ref, claim)
            self.done += 1

    def finished(self, ref, claim: Claim) -> None:
        ex = self.ray.exceptions
        queue.finish_job(claim.job_id)
        try:
            outcome = self.ray.get(ref)
        except ex.TaskCancelledError:
            return                      # cancelled by its user: the store says so already
        except ex.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, OSError):
                store.set_status(claim.run_id, "failed", f"The run's folder could not be written on its node "
                                 f"({one_line(cause, 200)}); mount the workspace at {workspace.home()} on every "
                                 "Ray node, then press Resume.", only_if=store.STARTED)
                return
            self.node_lost(claim, f"its task failed ({type(cause or exc).__name__})")
            return
        except (ex.RayError, ConnectionError) as exc:   # WorkerCrashedError, NodeDiedError, ObjectLostError, ...
            self.node_lost(claim, f"Ray reported {type(exc).__name__}")
            return
        code = outcome["exit_code"]
        if code < 0:                                     # killed by a signal: its node or process was lost
            self.node_lost(claim, f"its process on {outcome['node']} was killed (signal {-code})")
        elif code > 0:
            store.set_status(claim.run_id, "interrupted",
                             f"The training process ended abruptly (exit code {code}); if memory ran out, lower "
                             "the batch or image size, then press Resume.", only_if=store.STARTED)

    def node_lost(self, claim: Claim, why: str) -> None:
        """Interrupted, then queued again to resume from its last checkpoint, at most MAX_LOST_RETRIES times."""
        run_id = claim.run_id
        tries = self.lost.get(run_id, 0)
        if tries >= MAX_LOST_RETRIES:
            store.set_status(run_id, "interrupted",
                             f"Its node or process was lost {tries + 1} times ({why}); it was resumed "
                             f"automatically {tries} times and is left interrupted: check the cluster's nodes, "
                             "then press Resume.", only_if=store.STARTED)
            return
        if not store.set_status(run_id, "interrupted", f"Its node or process was lost ({why}); resuming from "
                                f"its last checkpoint (automatic retry {tries + 1} of {MAX_LOST_RETRIES}).",
                                only_if=store.STARTED):
            return                      # it had ended meanwhile (done, cancelled): nothing to resume
        self.lost[run_id] = tries + 1
        if store.set_status(run_id, "queued", f"Queued again after its node was lost (automatic retry {tries + 1} "
                            f"of {MAX_LOST_RETRIES}); it resumes from its last checkpoint.",
                            only_if=("interrupted",)):
            store.update_run(run_id, cancel_requested=False)
            queue.enqueue(run_id, resume=True)

    def claim_free_slots(self) -> None:
        while len(self.inflight) < self.slots:
            claim = queue.claim_next_job(self.worker_id)
            if claim is None:
                return
            try:
                self.submit(claim)
            except Exception as exc:  # noqa: BLE001 - that run fails in one sentence, the worker goes on
                queue.finish_job(claim.job_id)
                store.set_status(claim.run_id, "failed", f"Ray did not accept the run's task "
                                 f"({type(exc).__name__}: {one_line(exc, 200)}).", only_if=store.STARTED)

    def stop_all(self) -> None:
        """The worker is ending (SIGTERM, Ctrl-C, an error) with tasks in Ray: they are cancelled and their runs
        left interrupted (resumable), as the embedded worker does with its children."""
        for ref in self.inflight:
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001, S110 - the run is marked below either way
                pass
        for claim in self.inflight.values():
            queue.finish_job(claim.job_id)
            store.set_status(claim.run_id, "interrupted", "The worker stopped before this run ended; press Resume "
                             "to continue from its last finished epoch.", only_if=store.STARTED)
        self.inflight.clear()

    def run(self, until_idle: bool) -> int:
        _register_worker(self.worker_id, self.slots, self.device)
        stop = threading.Event()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.is_set():
                _beat_worker(self.worker_id)
                self.beat_runs()
                queue.mark_stale_runs()
                self.cancel_cancelled()
                self.collect()
                self.claim_free_slots()
                if until_idle and not self.inflight and not queue.queued_jobs():
                    break
                stop.wait(self.poll)
        finally:
            self.stop_all()
            _beat_worker(self.worker_id, stopped=True)
        return self.done


def run_ray_worker(address: str | None = None, slots: int | None = None, until_idle: bool = False,
                   poll: float = 1.0) -> int:
    """`engine worker --executor ray`: claim runs from the store and run each as a Ray task. Without an address a
    local Ray instance is started (and shut down at the end). Returns the number of runs' tasks that ended."""
    queue.max_running_per_user()        # a malformed per-user cap is refused before Ray starts
    ray = import_ray()
    if slots is not None and slots < 1:
        raise UserError("--slots must be at least 1; leave it out for one run per GPU (or per node).")
    owned = connect(ray, address, slots)
    try:
        return RayWorker(ray, slots, poll).run(until_idle)
    finally:
        if owned:
            ray.shutdown()
