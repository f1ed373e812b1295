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

from engine.config import RunConfig
from engine.data.folds import fold_groups
from engine.data.manifest import manifest_or_none
from engine.preflight import check_config
from engine.runs import execute, queue, store
from engine.runs.submit import create_run
from engine.tasks import TASK_METRICS

CV_PREFIX = "cv:"        # the store's `study` column tags the runs of one cross-validation ("cv:<id>")


def fold_configs(config: RunConfig, folds: int) -> list[RunConfig]:
    tag = config.name or "cross-validation"
    return [replace(config, folds=folds, fold=i, name=f"{tag} · fold {i}/{folds}") for i in range(1, folds + 1)]


def create_folds(config: RunConfig, folds: int, status: str = "queued") -> tuple[str, list[str]]:
    """Record (and with status 'queued', enqueue) one run per fold; returns the cross-validation id and run ids."""
    check_config(replace(config, folds=folds, fold=1))          # refuse before any fold is recorded
    cv_id = CV_PREFIX + secrets.token_hex(4)
    run_ids = []
    for fold_config in fold_configs(config, folds):
        run_id = create_run(fold_config, status=status, study=cv_id, trial=fold_config.fold)
        if status == "queued":
            queue.enqueue(run_id, resume=False)
        run_ids.append(run_id)
    return cv_id, run_ids


def run_folds_here(config: RunConfig, folds: int, handlers=lambda: ()) -> dict:
    """`train --folds K`: the K fold runs one after another in this process; the summary, plus the id."""
    check_config(replace(config, folds=folds, fold=1))          # refuse before the first fold trains
    cv_id = CV_PREFIX + secrets.token_hex(4)
    runs = []
    for fold_config in fold_configs(config, folds):
        run_id = create_run(fold_config, status="starting", study=cv_id, trial=fold_config.fold)
        runs.append(execute.run_job(run_id, handlers=handlers()))
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
