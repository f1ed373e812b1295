"""Starting a run from one of your finished runs (RunConfig.pretrained = "run:RUN_ID"): who may, which runs are
offered, and what the new run kept. Loading is engine.models.weights.load_run; the actor-free checks (finished,
same architecture and task) are engine.preflight.check_source_run."""
from __future__ import annotations

from engine.accounts import access
from engine.accounts.actor import Actor
from engine.models.weights import RUN_PREFIX, source_run_id
from engine.pretrain import library
from engine.runs import paths, store

WEIGHTS_NOTE = paths.WEIGHTS_NOTE       # written by the Trainer into the new run's folder
ENCODER_PREFIX = "encoder:"             # engine.pretrain.library.PREFIX


def check_start(actor: Actor | None, pretrained: object) -> dict | None:
    """The source run when `pretrained` is "run:ID" and the actor may start from it; None for other sources.
    A student may only start from their own runs (refused in one line that gives nothing of the other run away),
    and from the pre-trained encoders they may see ("encoder:ID")."""
    run_id = source_run_id(pretrained)
    if run_id is None:
        if isinstance(pretrained, str) and pretrained.strip().lower().startswith(ENCODER_PREFIX):
            library.check_encoder(actor, pretrained.strip()[len(ENCODER_PREFIX):].strip())
        return None
    return access.check_run(actor, run_id, "start from")


def value_for(run_id: str) -> str:
    return RUN_PREFIX + run_id


def candidates(actor: Actor | None, task: str, arch: str | None = None) -> list[dict]:
    """The finished runs with a best checkpoint that the actor may start a `task` run from (of `arch` when
    given), newest first."""
    runs = access.visible_runs(actor, store.list_runs(status=("done",)))
    return [r for r in runs if r["task"] == task and (arch is None or r["arch"] == arch)
            and paths.has_best_checkpoint(r["id"])]


def start_note(run_id: str) -> str | None:
    """What the run kept of the weights it started from (paths.weights_note); None from scratch."""
    return paths.weights_note(run_id)
