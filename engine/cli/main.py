"""`python -m engine <command>`: everything the UI does, scriptable. With --json the last line is one JSON object.

Each command lives in one module of this package, listed in COMMAND_MODULES; only the module of the command
being run is imported, so `runs` or `cancel` answer without loading torch. A module that is missing fails loudly."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from engine.accounts.users import get_actor
from engine.cli.common import CommandFailed, add_actor_option, finite
from engine.errors import UserError, one_line

# command → module of engine.cli that declares it (its register(add) adds the parser and the handler)
COMMAND_MODULES = {
    "demo-data": "data", "demo-setup": "data", "ingest": "data", "datasets": "data", "delete-dataset": "data",
    "train": "train", "submit": "train", "run-job": "train", "worker": "train", "bench": "train",
    "runs": "queue", "cancel": "queue", "resume": "queue", "delete": "queue",
    "predict": "predict", "export": "predict",
    "search": "search", "learning-curve": "curve",
    "user": "users", "assignment": "assignment", "reproduce": "reproduce", "bundle": "reproduce",
    "pretrain": "pretrain", "encoders": "pretrain",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of one command's module, or of all of them (for --help and unknown commands)."""
    parser = argparse.ArgumentParser(prog="python -m engine", description="Lightbox engine")
    parser.add_argument("--as", dest="as_user", metavar="USER", default=None,
                        help="act as this user (without it: the operator, who sees and may do everything)")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        add_actor_option(p)
        return p

    wanted = [COMMAND_MODULES[command]] if command in COMMAND_MODULES else list(dict.fromkeys(COMMAND_MODULES.values()))
    for module in wanted:
        importlib.import_module(f"engine.cli.{module}").register(add)
    return parser


def _command_in(argv: list[str]) -> str | None:
    """The first word that is neither an option nor the USER of a leading `--as USER`."""
    words = iter(argv)
    for word in words:
        if word == "--as":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_command_in(argv)).parse_args(argv)
    try:
        args.actor = None if args.as_user is None else get_actor(args.as_user)
        result = args.handler(args)
    except CommandFailed as exc:
        print(f"error: {one_line(exc, 1000)}", file=sys.stderr)
        if args.json:
            print(json.dumps(finite(exc.result), default=str))
        return 1
    except UserError as exc:
        print(f"error: {one_line(exc, 1000)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the contract: one readable line, never a traceback
        if os.environ.get("LIGHTBOX_DEBUG"):
            raise
        # one bounded line even for library text: OSError echoes whole paths, torch errors span many lines
        print(f"error: unexpected {type(exc).__name__}: {one_line(exc, 300)} (set LIGHTBOX_DEBUG=1 for details)",
              file=sys.stderr)
        return 3
    result = finite(result)
    print(json.dumps(result, default=str) if args.json else json.dumps(result, indent=2, default=str))
    return 0
