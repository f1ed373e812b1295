"""Queue commands that answer at once (no torch): runs, cancel, resume, delete."""
from __future__ import annotations

from engine.cli.common import run_summaries
from engine.runs import lifecycle, queue, store


def cmd_runs(args) -> dict:
    queue.mark_stale_runs()
    return {"runs": run_summaries(store.list_runs(status=args.status))}


def cmd_cancel(args) -> dict:
    return {"run_id": args.run_id, "status": lifecycle.cancel(args.run_id)}


def cmd_resume(args) -> dict:
    return {"run_id": args.run_id, "status": lifecycle.resume(args.run_id)}


def cmd_delete(args) -> dict:
    return {"run_id": args.run_id, "status": lifecycle.delete(args.run_id)}


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
