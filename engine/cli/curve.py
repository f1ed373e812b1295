"""`learning-curve`: the same run settings on 10 / 25 / 50 / 100 % of the training split (whole patients), one
validation split; prints each point and whether more labelled images would likely help."""
from __future__ import annotations

from engine.cli.common import all_done
from engine.cli.init_from import add_init_from, checks_start_from
from engine.cli.options import add_run_settings, config_from_args
from engine.cli.progress import TrainProgress
from engine.errors import UserError
from engine.runs import learning_curve


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(sorted({float(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise UserError(f"--fractions takes shares between 0.05 and 1 separated by commas, e.g. 0.1,0.5,1, "
                        f"not '{text[:40]}'.") from None
    if len(values) < 2 or not all(0.05 <= v <= 1.0 for v in values):
        raise UserError("--fractions takes at least two shares between 0.05 and 1, e.g. 0.1,0.25,0.5,1.")
    return values


def cmd_learning_curve(args) -> dict:
    config = config_from_args(args)
    fractions = _fractions(args.fractions)
    if args.submit:
        curve_id, run_ids = learning_curve.create_curve(config, fractions, actor=args.actor)
        return {"curve_id": curve_id, "run_ids": run_ids, "status": "queued"}
    result = learning_curve.run_curve_here(config, fractions, actor=args.actor,
                                           handlers=lambda: [TrainProgress(enabled=not args.quiet)])
    return all_done(result["points"], "runs of the learning curve", result)


def register(add) -> None:
    p = add("learning-curve", "train the same settings on 10/25/50/100 %% of the training split and say whether "
                              "more images would help")
    add_run_settings(p)
    add_init_from(p)
    p.add_argument("--fractions", default=",".join(f"{f:g}" for f in learning_curve.FRACTIONS),
                   help="shares of the training split, comma-separated (default 0.1,0.25,0.5,1)")
    p.add_argument("--submit", action="store_true", help="queue the runs for the worker instead of training here")
    p.set_defaults(handler=checks_start_from(cmd_learning_curve))
