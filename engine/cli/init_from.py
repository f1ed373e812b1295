"""`--init-from RUN_ID`: start a run from one of your finished runs (sugar for --pretrained run:RUN_ID), with the
check that a student starts only from their own runs (the actor is known here, not in preflight)."""
from __future__ import annotations

import argparse
import functools

from engine.models.weights import RUN_PREFIX
from engine.runs.start_from import check_start


def add_init_from(parser: argparse.ArgumentParser) -> None:
    # Same dest as --pretrained: whichever of the two comes last on the command line wins.
    parser.add_argument("--init-from", dest="pretrained", metavar="RUN_ID", type=lambda text: RUN_PREFIX + text.strip(),
                        default=argparse.SUPPRESS,
                        help="start from the best weights of one of your finished runs (same architecture): "
                             "matching layers load, the output layer is rebuilt when the classes differ")


def checks_start_from(handler):
    """The command handler, preceded by the access check on a "run:ID" weights source."""
    @functools.wraps(handler)
    def checked(args):
        check_start(args.actor, getattr(args, "pretrained", None))
        return handler(args)
    return checked
