"""Hyperparameter search with Optuna: each trial is an ordinary run in the store, pruned epoch by epoch.

Storage: PostgreSQL URLs use Optuna's RDB storage in the same database, so workers on several machines share
a study. With the default SQLite database, several processes writing one Optuna study lock each other out
("database is locked"), so studies live in a journal file in the workspace instead (Optuna's JournalStorage,
safe for several processes on one machine). Dead trials are found through the runs' own heartbeats, which
works for both storages (Optuna's heartbeat only exists for RDB with optimize()).

Ownership (classroom mode): a study records who made it (StudySpec.owner) and every trial's run is theirs, so a
student's search counts against an assignment's limits like their other runs and stops, with the reason kept in
the study, when a limit refuses the next trial. A student sees and acts on their own searches only; instructors
and the operator (actor None) on all.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from engine import workspace
from engine.accounts import access, users
from engine.accounts.actor import Actor
from engine.classroom import assignments
from engine.config import BY_NAME, RunConfig, check_value
from engine.data.dataset import load_manifest
from engine.errors import UserError, shown
from engine.runs import execute, lifecycle, queue, store
from engine.runs.submit import create_run
from engine.training.events import Event, Events
from engine.training.stops import RunPruned

OBJECTIVES = ("dice", "iou", "accuracy", "balanced_accuracy", "auc")
STOPPED_AT = "stopped_at"                # study attribute: when the user last stopped it
CANCELLED_TRIALS = "cancelled_trials"    # study attribute: trials a stop ended before they had a run
STOP_WAIT_SECONDS = 10.0                 # how long a stop waits for running trials to end before ending the process
STOPPED_MESSAGE = "Stopped with its search; continuing the search runs new trials."
MAX_NAME = 100                           # characters in a search's name ("name #trial" fits the runs' columns)
LIMIT_REACHED = "limit_reached"          # study attribute: why an assignment's limit ended the search (or None)

# Augmentation strength as one categorical choice: each level is a list of (name, params).
AUGMENT_LEVELS: dict[str, dict[str, dict[str, float]]] = {
    "none": {},
    "light": {"hflip": {"p": 0.5}, "rotate": {"degrees": 10.0}},
    "medium": {"hflip": {"p": 0.5}, "rotate": {"degrees": 15.0}, "zoom": {"amount": 0.1},
               "contrast": {"amount": 0.2}},
    "strong": {"hflip": {"p": 0.5}, "rotate": {"degrees": 25.0}, "zoom": {"amount": 0.2}, "shift": {"fraction": 0.1},
               "elastic": {"alpha": 40.0, "sigma": 5.0}, "contrast": {"amount": 0.3}, "noise": {"std": 0.03}},
}


@dataclass
class SearchSpace:
    lr: tuple[float, float] = (1e-4, 1e-2)
    weight_decay: tuple[float, float] | None = None        # None = keep the base config's value
    batch_sizes: list[int] = field(default_factory=lambda: [8, 16])
    archs: list[str] = field(default_factory=list)          # empty = keep the base architecture
    losses: list[str] = field(default_factory=list)
    optimizers: list[str] = field(default_factory=lambda: ["adam"])
    augment_levels: list[str] = field(default_factory=lambda: ["none"])


@dataclass
class StudySpec:
    dataset_id: str
    base: dict[str, Any]                      # RunConfig fields shared by every trial (arch, epochs, size…)
    space: SearchSpace = field(default_factory=SearchSpace)
    objective: str = ""
    n_trials: int = 20
    timeout: float | None = None              # seconds for the whole study
    sampler: str = "tpe"                      # tpe | random
    pruner: str = "median"                    # median | hyperband | none
    seed: int = 0
    name: str = ""
    owner: str | None = None                  # the user whose runs the trials are; None: made without accounts


def storage():
    url = workspace.db_url()
    if url.startswith("sqlite"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage
        return JournalStorage(JournalFileBackend(str(workspace.home() / "optuna-journal.log")))
    return optuna.storages.RDBStorage(url)


def _sampler(spec: StudySpec, joining: bool) -> optuna.samplers.BaseSampler:
    # Processes joining a study must not replay the same random start-up draws as the first one.
    seed = spec.seed if not joining else spec.seed * 7919 + os.getpid()
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, max(2, spec.n_trials // 4)))


def _pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(2, spec.base.get("epochs", 10)))
    if spec.pruner == "median":
        # Early epochs are noisy (validation Dice jumps around): judge only after a quarter of the budget, and
        # only once a few trials have finished, or nearly every trial gets cut against one lucky first run.
        return optuna.pruners.MedianPruner(n_startup_trials=min(5, max(2, spec.n_trials // 4)),
                                           n_warmup_steps=max(1, spec.base.get("epochs", 10) // 4))
    return optuna.pruners.NopPruner()


def check_space(space: SearchSpace) -> None:
    """Every value the space can draw must be a valid run setting (engine.config), or its trials fail one by
    one and never count towards the search's trials."""
    for name, bounds in (("lr", space.lr), ("weight_decay", space.weight_decay)):
        if bounds is None:
            continue
        if not 0 < bounds[0] < bounds[1]:
            raise UserError(f"The {BY_NAME[name].label.lower()} range must be two increasing positive numbers.")
        for value in bounds:
            check_value(BY_NAME[name], value)
    for name, values in (("batch_size", space.batch_sizes), ("optimizer", space.optimizers)):
        for value in values:
            check_value(BY_NAME[name], value)


def create_study(spec: StudySpec, actor: Actor | None = None) -> str:
    """Record a new study (its spec travels in the study's user attributes); returns its name. With an actor the
    study is theirs; a student may search only a dataset they may see, within its assignment's limits."""
    manifest = load_manifest(spec.dataset_id)
    if actor is not None:
        access.check_dataset(actor, spec.dataset_id, manifest)
        spec.owner = actor.name
    task = manifest["task"]
    spec.objective = spec.objective or ("dice" if task == "segmentation" else "accuracy")
    if spec.objective not in OBJECTIVES:
        raise UserError(f"Objective must be one of {', '.join(OBJECTIVES)}.")
    if spec.n_trials < 1:
        raise UserError("A search needs at least one trial.")
    check_space(spec.space)
    spec.base = {**spec.base, "dataset_id": spec.dataset_id, "task": task, "monitor": spec.objective}
    RunConfig.from_dict(spec.base).validate()
    # Epochs, image size, runs left, minutes left, deadline: what the trials cannot change is checked once here.
    assignments.check_submission(actor, spec.base)
    given = (spec.name or "").strip()
    name = check_name(given) if given else f"search-{store.new_run_id()}"
    study = optuna.create_study(study_name=name, storage=storage(), direction="maximize",
                                sampler=_sampler(spec, False), pruner=_pruner(spec))
    study.set_user_attr("spec", asdict(spec))
    study.set_user_attr("created", time.time())
    return name


def check_name(name: str) -> str:
    """A study's name is data (shown on pages, stored with its runs), never a file name; it is bounded so that
    the runs' name and study columns hold it on PostgreSQL too."""
    if len(name) > MAX_NAME:
        raise UserError(f"A search name must be at most {MAX_NAME} characters; '{shown(name)}' has {len(name)}.")
    if not name.isprintable():
        raise UserError("A search name must be one line of text, without tabs or control characters.")
    return name


def load_spec(name: str) -> StudySpec:
    return _spec_of(load_study(name))


def _spec_of(study: optuna.Study) -> StudySpec:
    data = dict(study.user_attrs["spec"])          # a study recorded before owners existed has none: None
    data["space"] = SearchSpace(**data["space"])
    return StudySpec(**data)


def _sees_every_search(actor: Actor | None) -> bool:
    return actor is None or actor.is_instructor


def check_access(actor: Actor | None, name: str, spec: StudySpec, action: str) -> StudySpec:
    """The spec, when the actor may `action` this study; another user's search is refused in one line."""
    if not _sees_every_search(actor) and spec.owner != actor.name:
        raise access.AccessDenied(f"Search '{shown(name)}' belongs to another user; you can only {action} your "
                                  "own searches.")
    return spec


def _owned_study(name: str, actor: Actor | None, action: str) -> tuple[optuna.Study, StudySpec]:
    study = load_study(name)
    return study, check_access(actor, name, _spec_of(study), action)


def load_study(name: str, spec: StudySpec | None = None, joining: bool = True) -> optuna.Study:
    try:
        study = optuna.load_study(study_name=name, storage=storage())
    except KeyError as exc:
        raise UserError(f"There is no search called '{shown(name)}'.") from exc
    if spec is not None:
        study.sampler, study.pruner = _sampler(spec, joining), _pruner(spec)
    return study


def list_studies(actor: Actor | None = None) -> list[dict]:
    """The studies the actor may see (a student: their own), newest first, each with its owner."""
    out = []
    for summary in optuna.get_all_study_summaries(storage()):
        spec = summary.user_attrs.get("spec") or {}
        owner = spec.get("owner")
        if not _sees_every_search(actor) and owner != actor.name:
            continue
        out.append({"name": summary.study_name, "owner": owner, "trials": summary.n_trials,
                    "best_value": summary.best_trial.value if summary.best_trial else None,
                    "created": summary.user_attrs.get("created", 0), "spec": spec or None})
    return sorted(out, key=lambda s: s["created"], reverse=True)


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Draw one point of the space; only dimensions with a real choice become parameters."""
    params: dict[str, Any] = {"lr": trial.suggest_float("lr", *space.lr, log=True)}
    if space.weight_decay:
        params["weight_decay"] = trial.suggest_float("weight_decay", *space.weight_decay, log=True)
    for key, options in (("batch_size", space.batch_sizes), ("arch", space.archs), ("loss", space.losses),
                         ("optimizer", space.optimizers), ("augment_level", space.augment_levels)):
        if len(options) > 1:
            params[key] = trial.suggest_categorical(key, list(options))
        elif options:
            params[key] = options[0]
    return params


def config_from_params(base: dict[str, Any], params: dict[str, Any]) -> RunConfig:
    """A RunConfig from the study's base settings plus one trial's parameters (also for 'train with best')."""
    values = {**base, **{k: v for k, v in params.items() if k != "augment_level"}}
    level = params.get("augment_level")
    if level is not None:
        augment = AUGMENT_LEVELS[level]
        values["augment"], values["augment_params"] = list(augment), {k: dict(v) for k, v in augment.items()}
    return RunConfig.from_dict(values)


class PruningReporter:
    """Reports the objective after every epoch and stops the run when the pruner says so."""

    def __init__(self, trial: optuna.Trial, objective: str) -> None:
        self.trial, self.objective = trial, objective

    def attach(self, events: Events) -> None:
        events.on(Event.EPOCH_END, self.on_epoch)

    def on_epoch(self, epoch: int, val: dict, **_) -> None:
        value = val.get(self.objective)
        if value is None or not math.isfinite(value):
            return
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise RunPruned(f"Pruned by the search after epoch {epoch}: {self.objective} {value:.3f} was "
                            "below the median of earlier trials.")


def fail_stale_trials(study: optuna.Study) -> int:
    """Trials whose run died (interrupted, heartbeat gone, or deleted) are failed and queued again with their
    parameters."""
    queue.mark_stale_runs()
    retried = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        run_id = trial.user_attrs.get("run_id")
        if not run_id:
            continue                    # asked a moment ago; its run is being created
        run = store.get_run(run_id)
        if run is not None and run["status"] not in ("interrupted", "failed", "cancelled"):
            continue                    # a run deleted by the user counts as dead too
        if not _failed_here(study, trial.number):
            continue                    # another process (a search, its Ray driver) failed it and queued the retry
        if not trial.user_attrs.get("retry_of"):
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            retried += 1
    return retried


def _failed_here(study: optuna.Study, number: int) -> bool:
    """Fail a running trial; False when another process ended it first. Two processes may sweep the same stale
    trial at once (a Ray search's driver and its next task): the storage keeps the first end and refuses the second
    (UpdateFinishedTrialError, or ValueError once the end is already visible), so only one queues its retry."""
    try:
        study.tell(number, state=TrialState.FAIL)
    except (UpdateFinishedTrialError, ValueError):
        return False
    return True


def _active_count(study: optuna.Study) -> int:
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return len(study.get_trials(deepcopy=False, states=states))


def _stop_requested(study: optuna.Study, since: float) -> bool:
    """Whether the user stopped the study after `since` (a search started later is a continuation)."""
    return float(study.user_attrs.get(STOPPED_AT) or 0) > since


def _finish(study: optuna.Study, trial: optuna.Trial, state: TrialState, value: float | None = None) -> None:
    """Tell Optuna a trial's end; one already ended elsewhere (a stop, a stale-trial sweep) is left as it is."""
    try:
        study.tell(trial, value, state=state, skip_if_finished=True)
    except UpdateFinishedTrialError:
        pass                            # ended by another process between the check and the write


def run_trial(study: optuna.Study, spec: StudySpec) -> TrialState:
    trial = study.ask()
    params = suggest(trial, spec.space)
    config = config_from_params(spec.base, params)
    config.name = f"{study.study_name} #{trial.number}"
    try:
        run_id = create_run(config, status="running", study=study.study_name, trial=trial.number, owner=spec.owner)
    except UserError as exc:       # e.g. an architecture too big for the image size: fail this point only
        _finish(study, trial, TrialState.FAIL)
        print(f"trial {trial.number} skipped: {exc}", file=sys.stderr)
        return TrialState.FAIL
    try:
        trial.set_user_attr("run_id", run_id)
        trial.set_user_attr("params", params)  # single-choice dimensions are not Optuna params; keep them all
    except optuna.exceptions.UpdateFinishedTrialError:     # a stop ended the trial while its run was created
        store.set_status(run_id, "cancelled", STOPPED_MESSAGE, only_if=store.ACTIVE)
        return TrialState.FAIL
    run = execute.run_job(run_id, handlers=[PruningReporter(trial, spec.objective)])
    if run["status"] == "pruned":
        _finish(study, trial, TrialState.PRUNED)
        return TrialState.PRUNED
    if run["status"] == "done" and run["best_value"] is not None:
        _finish(study, trial, TrialState.COMPLETE, run["best_value"])
        return TrialState.COMPLETE
    _finish(study, trial, TrialState.FAIL)          # a cancelled run included: its trial shows as cancelled
    return TrialState.FAIL


def run_search(name: str, n_trials: int | None = None, timeout: float | None = None,
               joining: bool = False, actor: Actor | None = None, at_most: int | None = None,
               since: float | None = None) -> dict[str, Any]:
    """Run trials of a study in this process until it has n_trials (counting other processes' too), the time
    is up, the user stops the study (stop_search), or an assignment's limit refuses the owner's next run.
    `at_most` bounds the trials this process runs (a Ray search's task runs one, engine.search.ray_search);
    a stop after `since` (default: now) ends it, so a task started just after its search was stopped runs none."""
    since = since or time.time()
    spec = check_access(actor, name, load_spec(name), "run")
    owner = _owner_actor(name, spec)
    study = load_study(name, spec, joining=joining)
    if study.user_attrs.get(LIMIT_REACHED):
        study.set_user_attr(LIMIT_REACHED, None)       # continued: the limit may have been raised since
    n_trials = n_trials or spec.n_trials
    timeout = timeout if timeout is not None else spec.timeout
    started, ran = time.monotonic(), 0
    while _active_count(study) < n_trials and not _stop_requested(study, since) and ran != at_most:
        if timeout and time.monotonic() - started > timeout:
            break
        reason = _limit_reached(owner, spec)
        if reason:
            # Every further trial would be refused the same way: end here instead of failing trial after trial.
            study.set_user_attr(LIMIT_REACHED, reason)
            print(f"search '{shown(name)}' stopped: {reason}", file=sys.stderr, flush=True)
            break
        fail_stale_trials(study)
        run_trial(study, spec)
        ran += 1
    return summary(name, actor=actor)


def _owner_actor(name: str, spec: StudySpec) -> Actor | None:
    """Who the trials' runs belong to (their role decides the limits); a removed user's search runs no more."""
    if spec.owner is None:
        return None
    try:
        return users.get_actor(spec.owner)
    except UserError:
        raise UserError(f"Search '{shown(name)}' belongs to '{shown(spec.owner)}', who no longer has an account, "
                        "so it runs no more trials; start a new search instead.") from None


def _limit_reached(owner: Actor | None, spec: StudySpec) -> str | None:
    """Why the owner may not make another run on the study's dataset now (runs, minutes, deadline), else None."""
    try:
        assignments.check_submission(owner, spec.base)
    except UserError as exc:
        return str(exc)
    return None


def _trial_state(trial: optuna.trial.FrozenTrial, run: dict | None, stopped: set[int]) -> str:
    """Optuna's state in lower case, except that a failed trial the user stopped reads 'cancelled'."""
    if trial.state == TrialState.FAIL and (trial.number in stopped or (run or {}).get("status") == "cancelled"):
        return "cancelled"
    return trial.state.name.lower()


def _trials_with_runs(study: optuna.Study, every_run: bool = True
                      ) -> list[tuple[optuna.trial.FrozenTrial, dict | None, str]]:
    """Each trial with its run (only failed trials' runs unless `every_run`: they tell cancelled from failed)."""
    stopped = set(study.user_attrs.get(CANCELLED_TRIALS) or ())
    out = []
    for t in study.get_trials(deepcopy=False):
        run_id = t.user_attrs.get("run_id")
        run = store.get_run(run_id) if run_id and (every_run or t.state == TrialState.FAIL) else None
        out.append((t, run, _trial_state(t, run, stopped)))
    return out


def summary(name: str, actor: Actor | None = None) -> dict[str, Any]:
    """Trial counts by state, the best trial (its validation score, settings, run and that run's held-out test
    metrics, which a student does not get while an assignment hides the test split) and why the search ended."""
    study, spec = _owned_study(name, actor, "see")
    trials = _trials_with_runs(study, every_run=False)
    counts = {state: 0 for state in (*(s.name.lower() for s in TrialState), "cancelled")}
    for _, _, state in trials:
        counts[state] += 1
    result: dict[str, Any] = {"study": name, "owner": spec.owner, "dataset_id": spec.dataset_id,
                              "trials": len(trials), "states": counts,
                              "best_value": None, "best_params": None, "best_run_id": None, "test": None,
                              STOPPED_AT: study.user_attrs.get(STOPPED_AT),
                              LIMIT_REACHED: study.user_attrs.get(LIMIT_REACHED)}
    if counts["complete"]:
        best = study.best_trial
        run_id = best.user_attrs.get("run_id")
        run = store.get_run(run_id) if run_id else None
        result.update(best_value=best.value, best_params=best.params, best_trial=best.number,
                      best_run_id=run_id, test=(run or {}).get("test"))
    return access.strip_hidden(actor, result)


def best_config(name: str, actor: Actor | None = None) -> RunConfig:
    """The best trial's settings as a normal RunConfig ('Train with the best parameters')."""
    study, spec = _owned_study(name, actor, "train from")
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        raise UserError("This search has no completed trial yet; wait for one to finish.")
    best = study.best_trial
    config = config_from_params(spec.base, best.user_attrs.get("params", best.params))
    config.name = f"best of {name}"
    return config


def trials_table(name: str, actor: Actor | None = None) -> list[dict[str, Any]]:
    """One row per trial: state, validation score, epochs, run and its status, the drawn settings (no test
    values: those stay with the runs, where the run pages hide them from students)."""
    rows = []
    for t, run, state in _trials_with_runs(_owned_study(name, actor, "see")[0]):
        run_id = t.user_attrs.get("run_id")
        rows.append({"trial": t.number, "state": state, "value": t.value,
                     "epochs": len(t.intermediate_values), "run_id": run_id,
                     "run_status": run["status"] if run else ("deleted" if run_id else None), **t.params})
    return rows


def stop_search(name: str, wait: float | None = None, actor: Actor | None = None) -> dict[str, Any]:
    """Stop a study: no new trial starts, running trials end as cancelled (their runs cancelled, Optuna told
    FAIL), and the background process started for it on this machine ends. The study stays resumable: a search
    started later (the page's Continue, `search --study NAME`) runs more trials.

    Returns the summary plus "stopped", "cancelled_trials" (numbers) and "process": none (no search process of
    ours), ended (it stopped by itself), killed (it ignored the request past `wait` seconds) or still running."""
    study, _ = _owned_study(name, actor, "stop")
    study.set_user_attr(STOPPED_AT, time.time())       # searches started before now start no new trial
    pid = _own_search_process(name)
    deadline = time.monotonic() + (STOP_WAIT_SECONDS if wait is None else wait)
    ended: set[int] = set()
    while True:
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        ended |= {t.number for t in running}
        # Asked every round: a run created meanwhile, or one whose start cleared the request, is asked again.
        busy = [t for t in running if _request_cancel(t.user_attrs.get("run_id"))]
        if (not busy if pid is None else not _alive(pid)) or time.monotonic() >= deadline:
            break                   # nothing left to wait for: the runs ended, or the search process did
        time.sleep(0.2)
    process = "none" if pid is None else "ended" if not _alive(pid) else _end_process(pid)
    _end_running_trials(study)
    result = summary(name, actor=actor)
    result.update(stopped=True, process=process, cancelled_trials=sorted(
        row["trial"] for row in trials_table(name) if row["trial"] in ended and row["state"] == "cancelled"))
    return result


def _request_cancel(run_id: str | None) -> bool:
    """Ask a trial's run to stop; whether it may still be going (no run yet counts: it is being created)."""
    run = store.get_run(run_id) if run_id else None
    if run_id and run is None:
        return False                                       # deleted
    if run is not None and run["status"] in store.ACTIVE and not run["cancel_requested"]:
        lifecycle.cancel(run_id)       # queued or starting: cancelled at once; running: stops at its next step
        run = store.get_run(run_id)
    return run is None or run["status"] in store.ACTIVE


def _end_running_trials(study: optuna.Study) -> None:
    """What is still RUNNING once the search process is gone: its runs cancelled, the trials told FAIL."""
    stopped = set(study.user_attrs.get(CANCELLED_TRIALS) or ())
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        run_id = trial.user_attrs.get("run_id")
        run = store.get_run(run_id) if run_id else None
        if run is None:
            stopped.add(trial.number)                      # ended before its run existed
        elif run["status"] in store.ACTIVE:
            lifecycle.cancel(run_id)
            # No process is left to notice the request (or it stalled past the wait): end the run here.
            store.set_status(run_id, "cancelled", STOPPED_MESSAGE, only_if=store.STARTED)
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    if stopped:
        study.set_user_attr(CANCELLED_TRIALS, sorted(stopped))


def _own_search_process(name: str) -> int | None:
    """The pid of the live background search of this study started on this machine, if it really is that
    process (a pid file outlives its process, and the pid may belong to another program by now)."""
    info = background_process(name)
    if not info or not info["alive"]:
        return None
    pid = int(_existing_process_files(name)[1].read_text().split()[0])
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None                     # cannot tell what it is: never signal it
    if "engine" in argv and "search" in argv and "--study" in argv and name in argv:
        return pid
    return None


def _end_process(pid: int, grace: float = 3.0) -> str:
    """Terminate a search process and its session (start_new_session made it a group leader); 'killed'."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return "ended"
        except PermissionError:
            return "still running"
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not _alive(pid):
                return "killed"
            time.sleep(0.1)
    return "killed" if not _alive(pid) else "still running"


def process_files(name: str) -> tuple[Path, Path]:
    """(log, pid file) of the background search of a study, in the workspace's logs folder.

    The name is data (any text: '../x', 100 KB, a newline), so the files are named by an id made from it: a
    readable slug of the name plus the first 16 hex digits of its SHA-256 — the same name always gives the same
    files, and nothing a user types chooses the folder, the length or a hidden dot-file."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name)[:32].strip("-_") or "study"
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    folder = workspace.home() / "logs"
    return folder / f"search-{slug}-{digest}.log", folder / f"search-{slug}-{digest}.pid"


_PLAIN_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.-]{0,99}")


def _existing_process_files(name: str) -> tuple[Path, Path]:
    """process_files, or for a search started before they were named by id the old '<name>.log/.pid' — read
    only, and only for a name that is a plain file name (no folder, no '..', no leading dot)."""
    log, pid = process_files(name)
    if not pid.exists() and _PLAIN_FILE_NAME.fullmatch(name) and ".." not in name:
        old_log, old_pid = log.parent / f"{name}.log", log.parent / f"{name}.pid"
        if old_pid.is_file():
            return old_log, old_pid
    return log, pid


def launch_search(name: str, actor: Actor | None = None) -> int:
    """Run the study in a background process (the Search page's 'Start'); returns its pid.

    The pid is kept beside the log so the page can tell a search that is still going from one whose process
    died (server restart, out of memory, an error before the first trial). The process acts as the operator
    (no --as): the owner travels in the study's spec, and its trials are the owner's runs."""
    _owned_study(name, actor, "run")                   # a known study, the actor's: never a process otherwise
    log, pid_file = process_files(name)
    log.parent.mkdir(exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "engine", "search", "--study", name, "--quiet"],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=os.environ.copy())
    pid_file.write_text(f"{proc.pid} {socket.gethostname()}")
    return proc.pid


def background_process(name: str) -> dict[str, Any] | None:
    """The search process the UI started for this study on this machine: {"alive", "last_line", "started"};
    None when there is none to know of (never launched from here, or launched on another machine)."""
    log, pid_file = _existing_process_files(name)
    try:
        pid_text, host = pid_file.read_text().split()
        pid, started = int(pid_text), pid_file.stat().st_mtime   # its time limit counts from the launch
    except (OSError, ValueError):
        return None
    if host != socket.gethostname():
        return None
    return {"alive": _alive(pid), "last_line": _last_line(log), "started": started}


def _last_line(path: Path, tail: int = 4096) -> str:
    """The last non-blank line of a log, reading only its end (the page asks every few seconds)."""
    try:
        with open(path, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - tail))
            lines = [line.strip() for line in log.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _alive(pid: int) -> bool:
    """Whether the process runs; a finished child the UI has not reaped yet (a zombie) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not Path("/proc").exists()      # /proc present but no entry: gone
