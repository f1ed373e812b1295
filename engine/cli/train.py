"""Training commands: train (in this process), submit (queue), run-job (a worker's child), worker, bench."""
from __future__ import annotations

import json
import os
import sys
import time

from engine.bench import PRESETS, BenchLog, process_age, run_bench
from engine.cli.common import CommandFailed, all_done, finite, run_summary
from engine.cli.init_from import add_init_from, checks_start_from
from engine.cli.options import add_run_settings, config_from_args
from engine.cli.progress import TrainProgress
from engine.errors import UserError
from engine.runs import crossval, execute, ray_executor, worker
from engine.runs.submit import create_run, submit


def cmd_train(args) -> dict:
    config = config_from_args(args)
    if config.folds >= 2 and not config.fold:
        return _train_folds(config, quiet=args.quiet, actor=args.actor)
    run_id = create_run(config, status="starting", actor=args.actor)
    run = execute.run_job(run_id, handlers=[TrainProgress(enabled=not args.quiet)])
    result = run_summary(run) | preset_shown(config)
    if run["status"] != "done":
        raise CommandFailed(run["message"] or f"run {run_id} {run['status']}", result)
    return result


def _train_folds(config, quiet: bool, actor=None) -> dict:
    """`train --folds K`: every fold trains here, owned by the actor; the JSON holds each fold's best and the
    mean ± sd."""
    result = crossval.run_folds_here(config, config.folds, handlers=lambda: [TrainProgress(enabled=not quiet)],
                                     actor=actor)
    return all_done(result["folds"], "folds", result)


def preset_shown(config) -> dict:
    """--preset auto: the JSON shows the preset's settings, their reasons and which flags overrode it."""
    return {"preset": config.preset} if config.preset else {}


def cmd_submit(args) -> dict:
    config = config_from_args(args)
    if config.folds >= 2 and not config.fold:
        cv_id, run_ids = crossval.create_folds(config, config.folds, actor=args.actor)
        return {"run_id": run_ids[0], "run_ids": run_ids, "cv_id": cv_id, "status": "queued"}
    return {"run_id": submit(config, actor=args.actor), "status": "queued"} | preset_shown(config)


def cmd_run_job(args) -> dict:
    result = run_summary(execute.run_job(args.run_id, resume=args.resume))
    print(json.dumps(finite(result), default=str), flush=True)
    sys.stderr.flush()
    # Everything is in the store already; skipping interpreter teardown (~1 s with torch loaded) frees the
    # worker's slot for the next queued run that much sooner.
    os._exit(0)


def cmd_worker(args) -> dict:
    if args.executor == "ray":
        return {"jobs_run": ray_executor.run_ray_worker(address=args.address, slots=args.slots,
                                                        until_idle=args.until_idle, poll=args.poll),
                "executor": "ray"}
    if args.address:
        raise UserError("--address names a Ray cluster; add --executor ray, or leave --address out.")
    return {"jobs_run": worker.run_worker(slots=args.slots, until_idle=args.until_idle, poll=args.poll)}


def bench_settings(args) -> dict:
    """The preset (time-boxed quick default, or --long) with any flag given on top; fixed --rounds drop the budget."""
    settings = dict(PRESETS["long" if args.long else "quick"])
    given = {"model": args.model, "rounds": args.rounds, "steps": args.steps, "batch": args.batch_size,
             "budget": args.budget}
    for flag, value, least in (("--rounds", args.rounds, 1), ("--steps", args.steps, 1),
                               ("--batch-size", args.batch_size, 2), ("--budget", args.budget, 0)):
        if value is not None and value < least:
            raise UserError(f"{flag} must be at least {least}; leave it out for the default.")
    settings.update({k: v for k, v in given.items() if v is not None})
    if args.rounds is not None:
        settings["budget"] = None
    elif args.budget is not None:
        settings["rounds"] = None           # --long --budget S: the long form's sizes, time-boxed
    return settings


def cmd_bench(args) -> dict:
    """The budget counts from the process start: what a user waits for includes importing torch."""
    return run_bench(device=args.device, log=BenchLog(enabled=not args.quiet),
                     started=time.monotonic() - process_age(), **bench_settings(args))


def register(add) -> None:
    for name, text, handler in (("train", "train a model now, in this process", cmd_train),
                                ("submit", "queue a run for the worker", cmd_submit)):
        p = add(name, text)
        add_run_settings(p)
        add_init_from(p)
        p.set_defaults(handler=checks_start_from(handler))

    p = add("run-job", "run one stored run (used by the worker)")
    p.add_argument("run_id")
    p.add_argument("--resume", action="store_true")
    p.set_defaults(handler=cmd_run_job)

    p = add("worker", "process queued runs")
    p.add_argument("--slots", type=int, default=None)
    p.add_argument("--until-idle", action="store_true")
    p.add_argument("--poll", type=float, default=1.0)
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: child processes on this machine (default); ray: tasks on a Ray cluster")
    p.add_argument("--address", default=None, help="with --executor ray: the cluster (auto, or ray://HEAD:10001); "
                   "without it a local Ray instance is started")
    p.set_defaults(handler=cmd_worker)

    quick = PRESETS["quick"]
    p = add("bench", f"engine vs plain-PyTorch training throughput (about {quick['budget']:.0f} s; --long: "
                     "both models, full rounds)")
    p.add_argument("--long", action="store_true", help="both models at batch 16, 8 rounds of 8 steps "
                   "(tens of minutes on a busy 2-core CPU)")
    p.add_argument("--model", default=None, choices=["all", "unet", "resnet18"],
                   help=f"default {quick['model']} ({PRESETS['long']['model']} with --long)")
    p.add_argument("--rounds", type=int, default=None, help="a fixed number of rounds instead of the time budget")
    p.add_argument("--steps", type=int, default=None, help=f"optimizer steps per loop and round "
                   f"(default {quick['steps']})")
    p.add_argument("--batch-size", type=int, default=None, help=f"default {quick['batch']}")
    p.add_argument("--budget", type=float, default=None, help=f"seconds for the whole command, start-up and set-up "
                   f"included (default {quick['budget']:.0f}); at least {quick['min_rounds']} rounds are measured")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(handler=cmd_bench)
