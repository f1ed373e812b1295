"""New runs: a RunConfig checked against its dataset and architecture, recorded in the store, optionally queued."""
from __future__ import annotations

from engine.accounts import access, users
from engine.accounts.actor import Actor
from engine.classroom.assignments import check_submission
from engine.config import RunConfig
from engine.models.registry import parameter_count
from engine.preflight import check_config
from engine.runs import queue, store


def create_run(config: RunConfig, status: str = "queued", study: str | None = None, trial: int | None = None,
               owner: str | None = None, actor: Actor | None = None) -> str:
    """Validate a config against its dataset and architecture (and, for a student, the limits of an assignment),
    then record it as a new run owned by the actor (`owner` names them when only the name is at hand)."""
    if actor is None and owner is not None:
        actor = users.get_actor(owner)
    manifest = check_config(config)
    if actor is not None and not actor.is_instructor:
        access.check_dataset(actor, config.dataset_id, manifest)
        check_submission(actor, config)             # an assignment's limits: epochs, image size, runs, deadline
    params = parameter_count(config.arch, manifest["channels"], manifest["num_classes"], options=config.model_options,
                             task=config.task)
    return store.insert_run(config.to_dict(), status=status, params=params, study=study, trial=trial,
                            owner=actor.name if actor else None)


def submit(config: RunConfig, study: str | None = None, trial: int | None = None, owner: str | None = None,
           actor: Actor | None = None) -> str:
    """Queue a new run; returns its id."""
    run_id = create_run(config, status="queued", study=study, trial=trial, owner=owner, actor=actor)
    queue.enqueue(run_id, resume=False)
    return run_id
