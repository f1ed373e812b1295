"""New runs: a RunConfig checked against its dataset and architecture, recorded in the store, optionally queued.

A student's runs on an assignment's dataset are held to its limits (engine.classroom.assignments.check_submission).
The runs-per-student check and the insert are one critical section per student (store.exclusive), so two tabs or
a script submitting at once cannot both take the last place; the K folds of a cross-validation are checked and
recorded together, all or none."""
from __future__ import annotations

from engine.accounts import access, users
from engine.accounts.actor import Actor
from engine.classroom.assignments import check_submission
from engine.config import RunConfig
from engine.models.registry import parameter_count
from engine.preflight import check_config
from engine.runs import queue, start_from, store


def create_runs(configs: list[RunConfig], status: str = "queued", study: str | None = None,
                trials: list[int | None] | None = None, owner: str | None = None,
                actor: Actor | None = None) -> list[str]:
    """Validate each config against its dataset and architecture (and, for a student, the dataset's access and
    the assignment's limits for all of them together), then record them as new runs owned by the actor (`owner`
    names them when only the name is at hand). Nothing is recorded when any is refused."""
    if actor is None and owner is not None:
        actor = users.get_actor(owner)
    student = actor is not None and not actor.is_instructor
    rows = []
    for config, trial in zip(configs, trials or [None] * len(configs), strict=True):
        manifest = check_config(config)
        if student:
            access.check_dataset(actor, config.dataset_id, manifest)
            start_from.check_start(actor, config.pretrained)            # only from their own runs and encoders
            check_submission(actor, config, count=len(configs))      # refused here without taking the lock
        params = parameter_count(config.arch, manifest["channels"], manifest["num_classes"],
                                 options=config.model_options, task=config.task)
        rows.append({"config": config.to_dict(), "params": params, "trial": trial})
    if not student:
        return [store.insert_run(row["config"], status=status, params=row["params"], study=study, trial=row["trial"],
                                 owner=actor.name if actor else None) for row in rows]
    with store.exclusive(f"submit:{actor.name}") as conn:
        for config in configs:         # again, in the critical section: what counts is the usage at insert time
            check_submission(actor, config, count=len(configs), conn=conn)
        return [store.insert_run(row["config"], status=status, params=row["params"], study=study, trial=row["trial"],
                                 owner=actor.name, conn=conn) for row in rows]


def create_run(config: RunConfig, status: str = "queued", study: str | None = None, trial: int | None = None,
               owner: str | None = None, actor: Actor | None = None) -> str:
    """Validate a config against its dataset and architecture (and, for a student, the limits of an assignment),
    then record it as a new run owned by the actor (`owner` names them when only the name is at hand)."""
    (run_id,) = create_runs([config], status=status, study=study, trials=[trial], owner=owner, actor=actor)
    return run_id


def submit(config: RunConfig, study: str | None = None, trial: int | None = None, owner: str | None = None,
           actor: Actor | None = None) -> str:
    """Queue a new run; returns its id."""
    run_id = create_run(config, status="queued", study=study, trial=trial, owner=owner, actor=actor)
    queue.enqueue(run_id, resume=False)
    return run_id
