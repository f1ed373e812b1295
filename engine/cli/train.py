"""Training commands: train (in this process), submit (queue), run-job (a worker's child), worker, bench."""
from __future__ import annotations

import json
import os
import sys

from engine.bench import run_bench
from engine.cli.common import CommandFailed, finite, run_summary
from engine.cli.options import add_run_settings, config_from_args
from engine.cli.progress import TrainProgress
from engine.runs import execute, worker
from engine.runs.submit import create_run, submit


def cmd_train(args) -> dict:
    run_id = create_run(config_from_args(args), status="starting")
    run = execute.run_job(run_id, handlers=[TrainProgress(enabled=not args.quiet)])
    result = run_summary(run)
    if run["status"] != "done":
        raise CommandFailed(run["message"] or f"run {run_id} {run['status']}", result)
    return result


def cmd_submit(args) -> dict:
    return {"run_id": submit(config_from_args(args)), "status": "queued"}


def cmd_run_job(args) -> dict:
    result = run_summary(execute.run_job(args.run_id, resume=args.resume))
    print(json.dumps(finite(result), default=str), flush=True)
    sys.stderr.flush()
    # Everything is in the store already; skipping interpreter teardown (~1 s with torch loaded) frees the
    # worker's slot for the next queued run that much sooner.
    os._exit(0)


def cmd_worker(args) -> dict:
    return {"jobs_run": worker.run_worker(slots=args.slots, until_idle=args.until_idle, poll=args.poll)}


def cmd_bench(args) -> dict:
    return run_bench(model=args.model, rounds=args.rounds, steps=args.steps, device=args.device)


def register(add) -> None:
    for name, text, handler in (("train", "train a model now, in this process", cmd_train),
                                ("submit", "queue a run for the worker", cmd_submit)):
        p = add(name, text)
        add_run_settings(p)
        p.set_defaults(handler=handler)

    p = add("run-job", "run one stored run (used by the worker)")
    p.add_argument("run_id")
    p.add_argument("--resume", action="store_true")
    p.set_defaults(handler=cmd_run_job)

    p = add("worker", "process queued runs")
    p.add_argument("--slots", type=int, default=None)
    p.add_argument("--until-idle", action="store_true")
    p.add_argument("--poll", type=float, default=1.0)
    p.set_defaults(handler=cmd_worker)

    p = add("bench", "engine vs plain-PyTorch training throughput")
    p.add_argument("--model", default="all", choices=["all", "unet", "resnet18"])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(handler=cmd_bench)
