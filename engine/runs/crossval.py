"""K-fold cross-validation by group as one job: K ordinary runs that share a name tag in the store, and the
summary (mean ± sd of each validation metric, per-fold values, which groups each fold validated on).

Which model is kept: none is picked from the folds. Cross-validation estimates how well a *recipe* (these
settings on this data) generalises; each fold's model saw only (K-1)/K of the patients. The model to use is an
ordinary run with the same settings on the whole training split — the summary says so. Ensembling K models
would make prediction K times slower and export K files, for a gain a course dataset cannot measure."""
from __future__ import annotations

import math
import secrets
from dataclasses import replace
from statistics import mean, stdev

from engine.accounts.actor import Actor
from engine.config import RunConfig
from engine.data.folds import fold_groups
from engine.data.manifest import manifest_or_none
from engine.preflight import check_config
from engine.runs import execute, queue, store
from engine.runs.submit import create_runs
from engine.tasks import TASK_METRICS

CV_PREFIX = "cv:"        # the store's `study` column tags the runs of one cross-validation ("cv:<id>")


def fold_configs(config: RunConfig, folds: int) -> list[RunConfig]:
    tag = config.name or "cross-validation"
    return [replace(config, folds=folds, fold=i, name=f"{tag} · fold {i}/{folds}") for i in range(1, folds + 1)]


def _record_folds(config: RunConfig, folds: int, status: str, actor: Actor | None) -> tuple[str, list[str]]:
    """The K fold runs, owned by the actor, recorded together: a student's runs-per-student limit must hold all K
    (checked with the inserts, in one critical section), so a refused cross-validation records no fold."""
    check_config(replace(config, folds=folds, fold=1))          # refuse before any fold is recorded
    cv_id = CV_PREFIX + secrets.token_hex(4)
    configs = fold_configs(config, folds)
    run_ids = create_runs(configs, status=status, study=cv_id, trials=[c.fold for c in configs], actor=actor)
    return cv_id, run_ids


def create_folds(config: RunConfig, folds: int, status: str = "queued",
                 actor: Actor | None = None) -> tuple[str, list[str]]:
    """Record (and with status 'queued', enqueue) one run per fold; returns the cross-validation id and run ids."""
    cv_id, run_ids = _record_folds(config, folds, status, actor)
    if status == "queued":
        for run_id in run_ids:
            queue.enqueue(run_id, resume=False)
    return cv_id, run_ids


WAITING = "Waiting for the folds before it: `train --folds` trains them one after another in its own process."
STOPPED = "Not trained: the `train --folds` command stopped before this fold's turn."


def run_folds_here(config: RunConfig, folds: int, handlers=lambda: (), actor: Actor | None = None) -> dict:
    """`train --folds K`: the K fold runs one after another in this process; the summary, plus the id.

    All K are recorded first, queued in the store but not in the worker's queue (this process trains them), so
    their places are taken together. A fold cancelled while it waits is skipped; if the command stops, the
    folds it did not reach are marked cancelled."""
    cv_id, run_ids = _record_folds(config, folds, "queued", actor)
    for run_id in run_ids[1:]:
        store.update_run(run_id, message=WAITING)
    runs = []
    try:
        for run_id in run_ids:
            if store.set_status(run_id, "starting", only_if=("queued",)):
                runs.append(execute.run_job(run_id, handlers=handlers()))
            else:                                               # cancelled while it waited its turn
                runs.append(store.require_run(run_id))
    finally:
        for run_id in run_ids[len(runs):]:
            store.set_status(run_id, "cancelled", STOPPED, only_if=("queued",))
    return {"cv_id": cv_id, **summary(runs)}


def summary(runs: list[dict]) -> dict:
    """{"folds": [{"run_id", "fold", "status", "best", "val_groups"}], "cv": {metric: {"mean", "sd", "n"}}}."""
    runs = sorted(runs, key=lambda r: r.get("trial") or 0)
    if not runs:
        return {"folds": [], "cv": {}}
    config = runs[0]["config"]
    folds, manifest = config.get("folds") or 0, manifest_or_none(config["dataset_id"])
    # a deleted dataset: the folds' numbers stay, their group names go
    groups = fold_groups(manifest, folds) if folds >= 2 and manifest else {}
    out = [{"run_id": r["id"], "fold": r.get("trial"), "status": r["status"],
            "best": {k: v for k, v in (r.get("best") or {}).items() if isinstance(v, (int, float))},
            "val_groups": groups.get(r.get("trial"), [])} for r in runs]
    cv = {}
    for metric in (*TASK_METRICS.get(config["task"], ()), "loss"):
        values = [f["best"][metric] for f in out if isinstance(f["best"].get(metric), (int, float))
                  and math.isfinite(f["best"][metric])]
        if values:
            cv[metric] = {"mean": mean(values), "sd": stdev(values) if len(values) > 1 else 0.0, "n": len(values)}
    return {"folds": out, "cv": cv}


def runs_of(cv_id: str) -> list[dict]:
    return store.list_runs(study=cv_id)
