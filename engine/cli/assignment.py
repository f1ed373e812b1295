"""The `assignment` command: create, list, handin, leaderboard, release (engine.classroom)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from engine.classroom import assignments, handins
from engine.errors import UserError

ACTIONS = ("create", "list", "handin", "leaderboard", "release")


def register(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    # One flat parser (not sub-parsers): the shared flags (--json, --as) then work anywhere on the line.
    p = add("assignment", "classroom assignments: create, list, handin, leaderboard, release")
    p.add_argument("action", choices=ACTIONS)
    p.add_argument("assignment", nargs="?", metavar="NAME", help="the assignment (handin, leaderboard, release)")
    p.add_argument("--name", dest="new_name", default=None, help="create: the new assignment's name")
    p.add_argument("--dataset", default=None, help="create: the dataset id (from `datasets`)")
    p.add_argument("--hide-test", action="store_true", help="create: students never see the test split's scores "
                   "until `assignment release`")
    p.add_argument("--max-epochs", type=int, default=None, help="create: most epochs a student's run may have")
    p.add_argument("--max-image-size", type=int, default=None, help="create: largest image size a student may use")
    p.add_argument("--runs-per-student", type=int, default=None, help="create: runs each student may make")
    p.add_argument("--gpu-minutes", type=float, default=None, help="create: training minutes each student may use")
    p.add_argument("--deadline", default=None, help="create: ISO date-time, e.g. 2026-12-01T18:00 (UTC unless a "
                   "zone is given)")
    p.add_argument("--run", default=None, help="handin: the run id to hand in")
    p.add_argument("--csv", default=None, metavar="OUT", help="leaderboard: also write it to this CSV file")
    p.add_argument("--pseudonyms", action="store_true", help="leaderboard: pseudonyms instead of names")
    p.set_defaults(handler=cmd_assignment)


def cmd_assignment(args) -> dict[str, Any]:
    actor = getattr(args, "actor", None)
    if args.action == "create":
        name = args.new_name or args.assignment
        if not name or not args.dataset:
            raise UserError("assignment create needs --dataset ID and --name NAME.")
        deadline = assignments.parse_deadline(args.deadline) if args.deadline else None
        return {"assignment": assignments.create_assignment(
            actor, args.dataset, name, hide_test=args.hide_test, max_epochs=args.max_epochs,
            max_image_size=args.max_image_size, runs_per_student=args.runs_per_student,
            gpu_minutes=args.gpu_minutes, deadline=deadline)}
    if args.action == "list":
        return {"assignments": assignments.list_assignments(actor)}
    if not args.assignment:
        raise UserError(f"assignment {args.action} needs the assignment's name; {assignments.LIST_HINT}.")
    if args.action == "release":
        return {"assignment": assignments.release(actor, args.assignment)}
    if args.action == "handin":
        if not args.run:
            raise UserError("assignment handin needs --run RUN_ID; `python -m engine runs` lists your runs.")
        return handins.hand_in(actor, args.assignment, args.run)
    return _leaderboard(actor, args)


def _leaderboard(actor, args) -> dict[str, Any]:
    found = assignments.get_assignment(args.assignment)
    out: dict[str, Any] = {"assignment": found["name"], "metric": found["metric"],
                           "leaderboard": assignments.leaderboard(actor, found["name"], args.pseudonyms)}
    if args.csv:
        path = Path(args.csv)
        try:
            path.write_text(assignments.leaderboard_csv(actor, found["name"], args.pseudonyms))
        except OSError as err:
            raise UserError(f"Could not write {path}: {err.strerror or 'write failed'}; choose another file.") from err
        out["csv"] = str(path)
    return out
