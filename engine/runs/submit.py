"""New runs: a RunConfig checked against its dataset and architecture, recorded in the store, optionally queued."""
from __future__ import annotations

from engine.config import RunConfig
from engine.models.registry import parameter_count
from engine.preflight import check_config
from engine.runs import queue, store


def create_run(config: RunConfig, status: str = "queued", study: str | None = None,
               trial: int | None = None) -> str:
    """Validate a config against its dataset and architecture, then record it as a new run."""
    manifest = check_config(config)
    params = parameter_count(config.arch, manifest["channels"], manifest["num_classes"], options=config.model_options,
                             task=config.task)
    return store.insert_run(config.to_dict(), status=status, params=params, study=study, trial=trial)


def submit(config: RunConfig, study: str | None = None, trial: int | None = None) -> str:
    """Queue a new run; returns its id."""
    run_id = create_run(config, status="queued", study=study, trial=trial)
    queue.enqueue(run_id, resume=False)
    return run_id
