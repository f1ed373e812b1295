"""What an actor may see and do. Students see and act on their own runs, and on their own datasets and those an
instructor shared; instructors, and the operator (actor None), on everything. The engine checks; pages only hide."""
from __future__ import annotations

from engine.accounts import users
from engine.accounts.actor import Actor
from engine.classroom import assignments
from engine.errors import UserError
from engine.runs import store


class AccessDenied(UserError):
    """The actor may not do this to that thing; the message never names what belongs to someone else."""


def _sees_everything(actor: Actor | None) -> bool:
    return actor is None or actor.is_instructor


def can_see_run(actor: Actor | None, run: dict) -> bool:
    return _sees_everything(actor) or run.get("owner") == actor.name


def check_run(actor: Actor | None, run_or_id: dict | str, action: str) -> dict:
    """The run, when the actor may `action` it ("stop", "resume", "delete", "predict with", "export");
    an unknown id is refused as unknown, another's run with one line that gives nothing of it away."""
    run = store.require_run(run_or_id) if isinstance(run_or_id, str) else run_or_id
    if not can_see_run(actor, run):
        raise AccessDenied(f"Run {run['id']} belongs to another user; you can only {action} your own runs.")
    return run


def visible_runs(actor: Actor | None, runs: list[dict]) -> list[dict]:
    return list(runs) if _sees_everything(actor) else [r for r in runs if can_see_run(actor, r)]


def can_see_dataset(actor: Actor | None, manifest: dict, instructors: set[str] | None = None) -> bool:
    """A student sees datasets they own, those an instructor owns (shared with the class) and those with no owner
    (made before accounts existed). `instructors`: their names, when the caller checks many datasets."""
    if _sees_everything(actor):
        return True
    owner = manifest.get("owner")
    if owner is None or owner == actor.name:
        return True
    return owner in (users.instructors() if instructors is None else instructors)


def visible_datasets(actor: Actor | None, manifests: list[dict]) -> list[dict]:
    """The datasets (manifests) this actor may see and train on, in their order; one query for the instructors."""
    if _sees_everything(actor):
        return list(manifests)
    instructors = users.instructors()
    return [m for m in manifests if can_see_dataset(actor, m, instructors)]


def check_dataset(actor: Actor | None, dataset_id: str, manifest: dict) -> dict:
    """The manifest, when the actor may train on that dataset; refused in one line otherwise."""
    if not can_see_dataset(actor, manifest):
        raise AccessDenied(f"Dataset {dataset_id} belongs to another student; train on your own datasets or on "
                           "those your instructor shared.")
    return manifest


def strip_hidden(actor: Actor | None, run: dict, hidden: set[str] | None = None) -> dict:
    """The run (a store row or a CLI summary) without test metrics when a student must not see them: its dataset
    is an assignment whose test split is hidden and not yet released. `hidden`: those dataset ids, when the
    caller strips many runs and asked assignments.hidden_test_datasets() once."""
    if _sees_everything(actor):
        return run
    if run.get("dataset_id") not in (assignments.hidden_test_datasets() if hidden is None else hidden):
        return run
    out = {k: v for k, v in run.items() if k != "test" and not k.startswith("test_")}
    for key in ("best", "best_metrics"):
        if isinstance(out.get(key), dict):
            out[key] = {k: v for k, v in out[key].items() if not k.startswith("test")}
    return out

