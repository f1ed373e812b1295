"""The body of a search trial's Ray task (engine.search.ray_search): what runs on a cluster node. Light on purpose,
like engine.runs.ray_task: a Ray worker process imports this module and is reused for later tasks, so it never
loads torch or Optuna; the trial's own `engine search --study NAME --at-most 1` child process does, and ends with
the trial."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

from engine.runs.ray_task import REPO_ROOT, _die_with_parent_hook


def search_process(name: str, n_trials: int, since: float, log: str) -> dict:
    """One trial of study `name` (none once it holds n_trials) in a child process on this node: Optuna's storage
    hands it the next point, as to any process joining the study; a stop of the search after `since` means it
    runs none. Its output is appended to the search's log on the shared workspace. Returns the exit code, the
    node, the child's last line of standard output (its JSON summary) and of its errors (a one-line refusal)."""
    args = [sys.executable, "-m", "engine", "search", "--study", name, "--trials", str(n_trials), "--at-most", "1",
            "--since", repr(since), "--quiet", "--json"]
    hook = _die_with_parent_hook()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            cwd=os.environ.get("LIGHTBOX_CODE", str(REPO_ROOT)),
                            preexec_fn=hook)  # noqa: PLW1509 - one prctl call, libc loaded before the fork
    try:
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:         # the task was interrupted (ray.cancel): the trial's process goes with it
            proc.kill()
            proc.wait()
    with open(log, "ab") as file:
        file.write(err + out)
    return {"exit_code": proc.returncode, "node": socket.gethostname(), "result": _last_line(out),
            "error": _last_line(err)}


def _last_line(data: bytes) -> str:
    lines = [line.strip() for line in data.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""
