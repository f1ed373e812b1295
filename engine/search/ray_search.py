"""A study's trials as Ray tasks, in parallel across the cluster's nodes (`engine search --executor ray`).

Optuna stays the sampler and pruner and its storage stays the run store's database: each task runs one trial in
a child `python -m engine search --study NAME --at-most 1` process on its node, which joins the study exactly as
several search processes on several machines do today (engine.search.study) — Optuna's storage hands each the
next point, every trial is an ordinary run of the study's owner, pruned epoch by epoch. This process, the Ray
driver, only keeps `parallel` tasks in the cluster until the study holds its trials: one trial per task, so the
study ends with exactly n_trials (long-lived joining processes may each add one too many in a race), and a trial
goes wherever the cluster has the resources one run of the study needs (engine.runs.ray_executor.run_resources).

Stop (`search --study NAME --stop`, the page's Stop) works as for any search: it marks the study stopped and
cancels the running trials' runs through the store; their processes end at their next step, tasks started after
the stop run no trial, and this driver starts none. A task whose node or process is lost leaves its run without a
heartbeat: it is marked interrupted, its trial failed and queued again with its parameters (fail_stale_trials),
and the next task runs that retry. Ray is optional: imported only when such a search starts."""
from __future__ import annotations

import json
import os
import time
from typing import Any

from optuna.trial import TrialState

from engine.accounts.actor import Actor
from engine.errors import UserError, one_line, shown
from engine.runs import queue, ray_executor
from engine.search import study as search
from engine.search.ray_trial import search_process

POLL_SECONDS = 0.5


def default_parallel(cluster: dict, trials_left: int) -> int:
    """Trials at once when --parallel is not given: one per GPU in the cluster, else one per CPU, never more than
    the trials left to run."""
    gpus = int(cluster.get("GPU", 0))
    return max(1, gpus or min(int(cluster.get("CPU", 1)), trials_left))


def _counts(study) -> tuple[int, int]:
    """(trials finished with a score or pruned, trials running) in the study, every process's."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    running = sum(1 for t in trials if t.state == TrialState.RUNNING)
    return len(trials) - running, running


def run_search_on_ray(name: str, parallel: int | None = None, address: str | None = None,
                      actor: Actor | None = None, n_trials: int | None = None, timeout: float | None = None,
                      poll: float = POLL_SECONDS) -> dict[str, Any]:
    """Run study `name` as Ray tasks, `parallel` trials at once, on the cluster at `address` (or a local Ray
    instance started for it and shut down at the end) until it holds n_trials, the time is up, the user stops it,
    or an assignment's limit refuses the owner's next run. Returns the study's summary, as run_search does."""
    since = time.time()
    spec = search.check_access(actor, name, search.load_spec(name), "run")
    if parallel is not None and parallel < 1:
        raise UserError("--parallel must be at least 1; leave it out for one trial per GPU (or per CPU).")
    ray = ray_executor.import_ray()
    study = search.load_study(name, spec)
    n_trials = n_trials or spec.n_trials
    timeout = timeout if timeout is not None else spec.timeout
    done, running = _counts(study)
    local_slots = parallel or max(1, min(os.cpu_count() or 1, n_trials - done - running))
    owned = ray_executor.connect(ray, address, local_slots)
    try:
        cluster = ray.cluster_resources()
        parallel = parallel or default_parallel(cluster, n_trials - done - running)
        ended = _Driver(ray, study, spec, since, parallel, cluster, poll).run(n_trials, timeout)
    finally:
        if owned:
            ray.shutdown()
    if ended.get("limit_reached"):
        study.set_user_attr(search.LIMIT_REACHED, ended["limit_reached"])   # a later task may have cleared it
    result = search.summary(name, actor=actor)
    result.update(executor="ray", parallel=parallel)
    return result


class _Driver:
    """Keeps `parallel` one-trial tasks in the cluster while the study needs trials."""

    def __init__(self, ray, study, spec: search.StudySpec, since: float, parallel: int, cluster: dict,
                 poll: float) -> None:
        self.ray, self.study, self.since, self.parallel, self.poll = ray, study, since, parallel, poll
        resources = ray_executor.run_resources(spec.base, cluster)
        # Torch in each trial's process uses the CPUs its task was given, not every core of a node that K
        # trials share (K processes with a thread per core each thrash the node).
        env = {**ray_executor.task_env(), "OMP_NUM_THREADS": str(int(resources["num_cpus"]))}
        self.remote = ray.remote(max_retries=0, retry_exceptions=False)(search_process).options(
            **resources, runtime_env={"env_vars": env})
        log = search.process_files(study.study_name)[0]
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = str(log)
        self.inflight: list = []
        self.launched = 0
        self.lost_at: float | None = None           # when a task's process was last lost (its trial hangs a while)
        self.error: str | None = None
        self.limit: str | None = None

    def run(self, n_trials: int, timeout: float | None) -> dict[str, Any]:
        try:
            return self._run(n_trials, timeout)
        except BaseException:
            for ref in self.inflight:       # Ctrl-C, SIGTERM, an error: no trial goes on without its driver
                self.ray.cancel(ref, force=True)
            raise

    def _run(self, n_trials: int, timeout: float | None) -> dict[str, Any]:
        started = time.monotonic()
        most = 3 * n_trials + self.parallel         # trials that keep failing (never counted) end the search
        while True:
            self.collect()
            if self.lost_at is not None:
                search.fail_stale_trials(self.study)        # a lost task's run, once stale: interrupted, retried
            done, running = _counts(self.study)
            ending = (self.error or self.limit or self.stopped()
                      or (timeout and time.monotonic() - started > timeout) or self.launched >= most)
            while not ending and len(self.inflight) < self.parallel and \
                    done + max(running, len(self.inflight)) < n_trials:
                self.inflight.append(self.remote.remote(self.study.study_name, n_trials, self.since, self.log))
                self.launched += 1
            if not self.inflight and (ending or done + running >= n_trials) and not self.waiting_for_lost(running):
                break
            time.sleep(self.poll)
        if self.error:
            raise UserError(self.error)
        return {"limit_reached": self.limit}

    def stopped(self) -> bool:
        """Whether the user stopped the search after this driver started (stop_search)."""
        return float(self.study.user_attrs.get(search.STOPPED_AT) or 0) > self.since

    def waiting_for_lost(self, running: int) -> bool:
        """Whether a lost task's trial may still be running in the study until its run is seen stale."""
        return (running > 0 and self.lost_at is not None
                and time.monotonic() - self.lost_at < queue.stale_seconds() + 10 * self.poll + 5)

    def collect(self) -> None:
        if not self.inflight:
            return
        ready, self.inflight = self.ray.wait(self.inflight, num_returns=len(self.inflight), timeout=0)
        for ref in ready:
            try:
                outcome = self.ray.get(ref)
            except (self.ray.exceptions.RayError, ConnectionError):   # its worker or node died
                self.lost_at = time.monotonic()
                continue
            code = outcome["exit_code"]
            if code < 0:                                    # killed by a signal: its process was lost
                self.lost_at = time.monotonic()
            elif code > 0 and not self.error:
                why = outcome["error"].removeprefix("error: ") or f"its process ended with exit code {code}"
                self.error = (f"A trial of search '{shown(self.study.study_name)}' on node {outcome['node']} "
                              f"failed: {one_line(why, 400)}")
            elif code == 0:
                self.limit = self.limit or _limit_of(outcome["result"])


def _limit_of(result_line: str) -> str | None:
    """Why an assignment's limit ended the search, from a trial process's JSON summary (None: it did not)."""
    try:
        return json.loads(result_line).get(search.LIMIT_REACHED)
    except (ValueError, AttributeError):
        return None
