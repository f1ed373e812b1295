"""The body of a run's Ray task (engine.runs.ray_executor): what runs on a cluster node. Light on purpose: a Ray
worker process imports this module to run the task and is reused for later tasks, so it never loads torch; the
run's own `engine run-job` child process does, and ends with the run."""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from engine.runs.paths import run_dir

REPO_ROOT = Path(__file__).resolve().parents[2]      # the folder holding the `engine` package


def _die_with_parent_hook():
    """The run's process must not outlive its Ray worker: a killed task means a stopped run, never an orphan.
    libc is loaded before the fork, so the child only makes one system call before exec (a Ray worker has
    threads: nothing that takes a lock may run between fork and exec)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return lambda: libc.prctl(1, signal.SIGKILL)     # PR_SET_PDEATHSIG


def run_job_process(run_id: str, resume: bool) -> dict:
    """The body of a run's Ray task: `python -m engine run-job` in a child process on this node, its output in
    the run's train.log (on the shared workspace). Returns the child's exit code and the node's name."""
    folder = run_dir(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "engine", "run-job", run_id] + (["--resume"] if resume else [])
    hook = _die_with_parent_hook()
    # Ray pins a task that asks for one CPU to one OpenMP thread; the run trains like the embedded worker's
    # children, with every core of its node (the worker keeps one CPU run per node unless --slots says more)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    with open(folder / "train.log", "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=os.environ.get("LIGHTBOX_CODE", str(REPO_ROOT)),
                                preexec_fn=hook)  # noqa: PLW1509 - one prctl call, libc loaded before the fork
    try:
        code = proc.wait()
    finally:
        if proc.poll() is None:         # the task was interrupted (ray.cancel): its run's process goes with it
            proc.kill()
            proc.wait()
    return {"exit_code": code, "node": socket.gethostname()}
