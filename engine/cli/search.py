"""CLI for hyperparameter search: `python -m engine search --dataset ID --trials N [--timeout S]`;
`search --study NAME` continues a study, `search --study NAME --stop` stops it (it stays resumable),
`search --study NAME --show` prints its summary and trials, `search --list` the searches one may see.
With `--as USER` the search is that user's: a student sees and acts on their own searches only.
With `--executor ray [--address ADDR] [--parallel K]` the trials run as Ray tasks, K at once across the cluster."""
from __future__ import annotations

import argparse
import json
import os
import sys

from engine.cli.common import finite
from engine.data.manifest import load_manifest
from engine.errors import UserError
from engine.models.registry import DEFAULT_ARCH
from engine.search import ray_search
from engine.search import study as search


def _csv(text: str, cast=str) -> list:
    return [cast(x) for x in text.split(",") if x.strip()]


def register(add) -> None:
    p = add("search", "run an Optuna hyperparameter search (each trial is a run)")
    p.add_argument("--dataset", help="dataset id (a new study)")
    p.add_argument("--study", help="join or continue an existing study by name")
    p.add_argument("--stop", action="store_true",
                   help="with --study: stop that search (running trials are cancelled; --study NAME continues it)")
    p.add_argument("--show", action="store_true", help="with --study: print its summary and trials, run nothing")
    p.add_argument("--list", action="store_true", help="list the searches (a student: their own)")
    p.add_argument("--trials", type=int, default=None, help="number of trials (new study: 20)")
    p.add_argument("--timeout", type=float, default=None, help="seconds for the whole search")
    p.add_argument("--arch", default="", help="one or more architectures, comma-separated")
    p.add_argument("--epochs", type=int, default=10, help="epoch budget per trial")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--lr-range", default="1e-4,1e-2")
    p.add_argument("--batch-sizes", default="8,16")
    p.add_argument("--optimizers", default="adam")
    p.add_argument("--losses", default="")
    p.add_argument("--augment-levels", default="none")
    p.add_argument("--objective", default="")
    p.add_argument("--sampler", default="tpe", choices=["tpe", "random"])
    p.add_argument("--pruner", default="median", choices=["median", "hyperband", "none"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: trials one after another in this process; ray: as Ray tasks across a cluster")
    p.add_argument("--address", default=None, help="with --executor ray: the cluster (auto, or ray://HEAD:10001); "
                   "without it a local Ray instance is started")
    p.add_argument("--parallel", type=int, default=None,
                   help="with --executor ray: trials at once (default: one per GPU, else one per CPU)")
    p.add_argument("--at-most", type=int, default=None, help="run at most this many trials in this process")
    p.add_argument("--since", type=float, default=None, help=argparse.SUPPRESS)   # a Ray search's start time

    p.set_defaults(handler=cmd_search)


def cmd_search(args) -> dict:
    actor = args.actor
    if args.list:
        return {"searches": [{k: s[k] for k in ("name", "owner", "trials", "best_value", "created")}
                             | {"dataset_id": (s["spec"] or {}).get("dataset_id")}
                             for s in search.list_studies(actor)]}
    if (args.stop or args.show) and not args.study:
        raise UserError(f"--{'stop' if args.stop else 'show'} needs --study NAME, the search to "
                        f"{'stop' if args.stop else 'show'}.")
    if args.stop:
        return search.stop_search(args.study, actor=actor)
    if args.show:
        return {**search.summary(args.study, actor=actor), "trial_rows": search.trials_table(args.study, actor=actor)}
    if args.executor != "ray" and (args.address or args.parallel is not None):
        raise UserError(f"--{'address' if args.address else 'parallel'} is for a search on Ray; add --executor ray, "
                        "or leave it out.")
    if args.executor == "ray" and args.at_most is not None:
        raise UserError("--at-most is for one search process; with --executor ray use --parallel for trials at once.")
    if args.study:
        return _run(args, args.study, joining=True)
    if not args.dataset:
        raise UserError("Give --dataset ID for a new search, or --study NAME to continue one.")
    archs = _csv(args.arch)
    lr = _csv(args.lr_range, float)
    if len(lr) != 2 or not 0 < lr[0] < lr[1]:
        raise UserError("--lr-range must be two increasing positive numbers, e.g. 1e-4,1e-2.")
    space = search.SearchSpace(lr=(lr[0], lr[1]), batch_sizes=_csv(args.batch_sizes, int), archs=archs,
                               losses=_csv(args.losses), optimizers=_csv(args.optimizers),
                               augment_levels=_csv(args.augment_levels))
    base = {"arch": archs[0] if archs else _default_arch(args.dataset), "epochs": args.epochs,
            "image_size": args.image_size, "seed": args.seed, "preview_samples": 2}
    spec = search.StudySpec(dataset_id=args.dataset, base=base, space=space, objective=args.objective,
                            n_trials=args.trials or 20, timeout=args.timeout, sampler=args.sampler,
                            pruner=args.pruner, seed=args.seed, name=args.name)
    name = search.create_study(spec, actor=actor)
    return _run(args, name, joining=False)


def _run(args, name: str, joining: bool) -> dict:
    if args.executor == "ray":
        return ray_search.run_search_on_ray(name, parallel=args.parallel, address=args.address, actor=args.actor,
                                            n_trials=args.trials, timeout=args.timeout)
    result = search.run_search(name, n_trials=args.trials, timeout=args.timeout, joining=joining, actor=args.actor,
                               at_most=args.at_most, since=args.since)
    if args.since is not None:
        # A Ray search's trial process (engine.search.ray_trial), as `run-job`: its trial is in the store and the
        # study already; skipping interpreter teardown (seconds with torch loaded on a busy node) frees its task.
        print(json.dumps(finite(result), default=str), flush=True)
        sys.stderr.flush()
        os._exit(0)
    return result


def _default_arch(dataset_id: str) -> str:
    return DEFAULT_ARCH[load_manifest(dataset_id)["task"]]
