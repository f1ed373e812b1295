"""The `bundle` and `reproduce` commands: a run as one reproducible ZIP, and re-running such a ZIP here."""
from __future__ import annotations

import argparse
from typing import Any, Callable

from engine.classroom.bundle import make_bundle, reproduce
from engine.cli.common import CommandFailed
from engine.cli.progress import TrainProgress


def register(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = add("bundle", "write a finished run as one reproducible ZIP (settings, seed, data fingerprint, versions, "
                      "metrics, diagnosis, exported model)")
    p.add_argument("--run", required=True, help="run id (from `runs`)")
    p.add_argument("out", metavar="OUT.zip", help="the ZIP file to write")
    p.set_defaults(handler=cmd_bundle)

    p = add("reproduce", "re-run a bundle here (same settings and seed) and report the difference in its "
                         "headline metric")
    p.add_argument("bundle", metavar="BUNDLE.zip")
    p.set_defaults(handler=cmd_reproduce)


def cmd_bundle(args) -> dict[str, Any]:
    return make_bundle(getattr(args, "actor", None), args.run, args.out)


def cmd_reproduce(args) -> dict[str, Any]:
    result = reproduce(args.bundle, getattr(args, "actor", None), handlers=[TrainProgress(enabled=not args.quiet)])
    if result["status"] != "done":
        raise CommandFailed(result["message"] or f"run {result['run_id']} {result['status']}", result)
    return result
