"""`python -m engine <command>`: everything the UI does, scriptable. With --json the last line is one JSON object."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from engine.errors import UserError

COMMANDS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {}


def command(name: str):
    def add(fn):
        COMMANDS[name] = fn
        return fn
    return add


# ---- data -------------------------------------------------------------------------------------------------

@command("demo-data")
def cmd_demo_data(args) -> dict:
    from engine.data.demo import write_demo
    options = {"n": args.n} if args.n else {}
    out = write_demo(args.kind, Path(args.out), size=args.size, seed=args.seed, **options)
    return {"path": str(out), "kind": args.kind}


@command("demo-setup")
def cmd_demo_setup(args) -> dict:
    """Make sure both built-in demo datasets are ingested (what `make run` starts with)."""
    from engine.data.demo import ensure_demo_dataset
    return {kind: ensure_demo_dataset(kind) for kind in ("segmentation", "classification")}


@command("ingest")
def cmd_ingest(args) -> dict:
    from engine.data.ingest import ingest
    src = Path(args.src)
    if not src.exists():
        raise UserError(f"{src} does not exist; give a folder or a .zip file.")
    progress = _progress_bar("Ingesting", enabled=not args.quiet)
    result = ingest(src, task=args.task, name=args.name, seed=args.seed, progress=progress)
    return {"dataset_id": result.dataset_id, "report": result.report.to_dict()}


@command("datasets")
def cmd_datasets(args) -> dict:
    from engine.data.dataset import list_datasets
    keys = ("id", "name", "task", "created", "source", "classes", "channels", "split_counts")
    return {"datasets": [{k: m.get(k) for k in keys} | {"samples": sum((m.get("split_counts") or {}).values())}
                         for m in list_datasets()]}


@command("delete-dataset")
def cmd_delete_dataset(args) -> dict:
    from engine import jobs
    return {"dataset_id": args.dataset_id, "status": jobs.delete_dataset(args.dataset_id)}


# ---- training ---------------------------------------------------------------------------------------------

def _config_from(args):
    from engine.config import RunConfig
    augment = [a for a in (args.augment or "").split(",") if a]
    return RunConfig(dataset_id=args.dataset, arch=args.arch, epochs=args.epochs, batch_size=args.batch_size,
                     lr=args.lr, loss=args.loss or "", image_size=args.image_size, device=args.device,
                     seed=args.seed, augment=augment, optimizer=args.optimizer, schedule=args.schedule,
                     pretrained=args.pretrained, freeze_backbone=args.freeze_backbone,
                     early_stopping=args.early_stopping, name=args.name or "")


def _summary(run: dict) -> dict:
    keys = ("status", "message", "arch", "dataset_id", "epoch", "epochs", "best_metric", "best_value",
            "best_epoch", "best", "test", "params", "train_seconds", "study", "trial", "created_at")
    out = {"run_id": run["id"], **{k: run.get(k) for k in keys}}
    if isinstance(out.get("best"), dict):
        out["best"] = {k: v for k, v in out["best"].items() if not isinstance(v, list)}
    return out


@command("train")
def cmd_train(args) -> dict:
    from engine import jobs
    from engine.runner import create_run
    run_id = create_run(_config_from(args), status="running")
    bar = _TrainProgress(enabled=not args.quiet)
    run = jobs.run_job(run_id, on_trainer=bar.attach)
    bar.close()
    result = _summary(run)
    if run["status"] != "done":
        raise CommandFailed(run["message"] or f"run {run_id} {run['status']}", result)
    return result


@command("submit")
def cmd_submit(args) -> dict:
    from engine import jobs
    return {"run_id": jobs.submit(_config_from(args)), "status": "queued"}


@command("run-job")
def cmd_run_job(args) -> dict:
    from engine import jobs
    result = _summary(jobs.run_job(args.run_id, resume=args.resume))
    print(json.dumps(_finite(result), default=str), flush=True)
    sys.stderr.flush()
    # Everything is in the store already; skipping interpreter teardown (~1 s with torch loaded) frees the
    # worker's slot for the next queued run that much sooner.
    os._exit(0)


@command("runs")
def cmd_runs(args) -> dict:
    from engine import jobs, store
    jobs.mark_stale_runs()
    return {"runs": [_summary(r) for r in store.list_runs(status=args.status)]}


@command("cancel")
def cmd_cancel(args) -> dict:
    from engine import jobs
    return {"run_id": args.run_id, "status": jobs.cancel(args.run_id)}


@command("resume")
def cmd_resume(args) -> dict:
    from engine import jobs
    return {"run_id": args.run_id, "status": jobs.resume(args.run_id)}


@command("delete")
def cmd_delete(args) -> dict:
    from engine import jobs
    return {"run_id": args.run_id, "status": jobs.delete(args.run_id)}


@command("worker")
def cmd_worker(args) -> dict:
    from engine import jobs
    return {"jobs_run": jobs.run_worker(slots=args.slots, until_idle=args.until_idle, poll=args.poll)}


@command("bench")
def cmd_bench(args) -> dict:
    from engine.bench import run_bench
    return run_bench(model=args.model, rounds=args.rounds, steps=args.steps, device=args.device)


# ---- plumbing ---------------------------------------------------------------------------------------------

def _finite(obj: Any) -> Any:
    """NaN/inf are not JSON: report them as null so any JSON parser can read our output."""
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


class CommandFailed(Exception):
    def __init__(self, message: str, result: dict) -> None:
        super().__init__(message)
        self.result = result


def _progress_bar(label: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm
    bar: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        if "bar" not in bar:
            bar["bar"] = tqdm(total=total, desc=label, unit="file", file=sys.stderr, leave=False)
        bar["bar"].n = done
        bar["bar"].refresh()
        if done >= total:
            bar["bar"].close()
    return update


class _TrainProgress:
    """A tqdm bar on stderr over all optimizer steps, with the latest validation metric."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.bar = enabled, None

    def attach(self, trainer, events) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm
        total = trainer.config.epochs * trainer.steps_per_epoch
        self.bar = tqdm(total=total, initial=trainer.state.step, desc="Training", unit="step", file=sys.stderr)
        events.on("step_end", lambda step, **_: self.bar.update(step - self.bar.n))
        events.on("epoch_end", lambda trainer, epoch, val, **_: self.bar.set_postfix(
            epoch=epoch, **{trainer.config.monitor: f"{val.get(trainer.config.monitor, float('nan')):.3f}"}))

    def close(self) -> None:
        if self.bar:
            self.bar.close()


def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="dataset id (from `ingest`)")
    p.add_argument("--arch", required=True, help="architecture name, e.g. unet, resnet18")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--augment", default="", help="comma-separated augmentation names")
    p.add_argument("--loss", default="")
    p.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "sgd"])
    p.add_argument("--schedule", default="constant", choices=["constant", "exponential", "step", "cosine", "onecycle"])
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pretrained", default="none", help="none, imagenet, or a weights file")
    p.add_argument("--freeze-backbone", action="store_true")
    p.add_argument("--early-stopping", type=int, default=0, help="patience in epochs (0 = off)")
    p.add_argument("--name", default="")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="Lightbox engine")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        return p

    p = add("demo-data", "write a built-in demo dataset (folder or .zip)")
    p.add_argument("kind", choices=["segmentation", "classification"])
    p.add_argument("out")
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)

    add("demo-setup", "ingest the built-in demo datasets once")

    add("datasets", "list the ingested datasets")
    add("delete-dataset", "delete an ingested dataset (runs trained on it keep their results)").add_argument(
        "dataset_id")

    p = add("ingest", "validate and cache a folder or ZIP of images")
    p.add_argument("src")
    p.add_argument("--task", required=True, choices=["segmentation", "classification"])
    p.add_argument("--name", default=None)
    p.add_argument("--seed", type=int, default=0)

    _add_train_options(add("train", "train a model now, in this process"))
    _add_train_options(add("submit", "queue a run for the worker"))

    p = add("run-job", "run one stored run (used by the worker)")
    p.add_argument("run_id")
    p.add_argument("--resume", action="store_true")

    p = add("runs", "list runs")
    p.add_argument("--status", action="append", default=None)
    for name, text in (("cancel", "stop a run"), ("resume", "continue a stopped run"),
                       ("delete", "delete a finished run with its checkpoints")):
        add(name, text).add_argument("run_id")

    p = add("worker", "process queued runs")
    p.add_argument("--slots", type=int, default=None)
    p.add_argument("--until-idle", action="store_true")
    p.add_argument("--poll", type=float, default=1.0)

    p = add("bench", "engine vs plain-PyTorch training throughput")
    p.add_argument("--model", default="all", choices=["all", "unet", "resnet18"])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    _register_late_commands(add)
    return parser


def _register_late_commands(add) -> None:
    """predict, export and search live in their own modules; their parsers are declared there."""
    for module in ("engine.predict_cli", "engine.search_cli"):
        try:
            mod = __import__(module, fromlist=["register"])
        except ModuleNotFoundError:
            continue
        mod.register(add, command)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = COMMANDS[args.command](args)
    except CommandFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps(_finite(exc.result), default=str))
        return 1
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the contract: one readable line, never a traceback
        if os.environ.get("LIGHTBOX_DEBUG"):
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (set LIGHTBOX_DEBUG=1 for details)", file=sys.stderr)
        return 3
    result = _finite(result)
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(json.dumps(result, indent=2, default=str))
    return 0
