"""Queue commands that answer at once (no torch): runs, cancel, resume, delete."""
from __future__ import annotations

from engine.accounts import access
from engine.classroom.assignments import hidden_test_datasets
from engine.cli.common import run_summaries
from engine.runs import lifecycle, queue, store


def cmd_runs(args) -> dict:
    """Every run; with --as a student, only theirs (and no hidden test values)."""
    queue.mark_stale_runs()
    actor = args.actor
    owner = actor.name if actor is not None and not actor.is_instructor else None
    runs = access.visible_runs(actor, store.list_runs(status=args.status, owner=owner))
    hidden = hidden_test_datasets() if owner else set()
    return {"runs": [access.strip_hidden(actor, row, hidden) for row in run_summaries(runs)]}


def cmd_cancel(args) -> dict:
    return {"run_id": args.run_id, "status": lifecycle.cancel(args.run_id, actor=args.actor)}


def cmd_resume(args) -> dict:
    return {"run_id": args.run_id, "status": lifecycle.resume(args.run_id, actor=args.actor)}


def cmd_delete(args) -> dict:
    return {"run_id": args.run_id, "status": lifecycle.delete(args.run_id, actor=args.actor)}


def register(add) -> None:
    p = add("runs", "list runs")
    p.add_argument("--status", action="append", default=None)
    p.set_defaults(handler=cmd_runs)
    for name, text, handler in (("cancel", "stop a run", cmd_cancel),
                                ("resume", "continue a stopped run", cmd_resume),
                                ("delete", "delete a finished run with its checkpoints", cmd_delete)):
        p = add(name, text)
        p.add_argument("run_id")
        p.set_defaults(handler=handler)
