"""Training throughput: the Trainer against a minimal PyTorch loop on the same model, data and threads.

Measured alternately in one process (windows of the same loop vary 10–25 % on a shared CPU), median of rounds:
- engine_ips: Trainer.train_epoch with its real handlers (store logging, cancel checks, train metrics);
- plain_ips: a hand-written loop with the same memory format and precision (the engine's overhead = ratio);
- naive_ips: a hand-written NCHW fp32 loop (what the engine's defaults — channels_last, AMP on CUDA — buy).
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from engine.config import RunConfig
from engine.data.demo import write_demo
from engine.data.ingest import ingest
from engine.models.network import build_network
from engine.runs.paths import run_dir
from engine.runs.submit import create_run
from engine.training.events import Events
from engine.training.handlers import StoreLogger
from engine.training.trainer import Trainer

CASES = {
    "unet": {"task": "segmentation", "arch": "unet", "size": 128, "batch": 16},
    "resnet18": {"task": "classification", "arch": "resnet18", "size": 224, "batch": 16},
}


def _prepare_trainer(case: dict, steps: int, device: str):
    """A real run in a scratch workspace: demo data ingested, Trainer with the store handlers attached."""

    n = int(case["batch"] * steps / 0.6) + 8     # enough for `steps` full batches in the train split
    src = write_demo(case["task"], Path(os.environ["LIGHTBOX_HOME"]) / f"demo-{case['arch']}",
                     n=n, size=case["size"], seed=1)
    dataset_id = ingest(src, task=case["task"]).dataset_id
    config = RunConfig(dataset_id=dataset_id, arch=case["arch"], task=case["task"], epochs=1000,
                       batch_size=case["batch"], image_size=case["size"], device=device, preview_samples=0)
    run_id = create_run(config, status="running")
    events = Events()
    trainer = Trainer(config, run_dir(run_id), events)
    StoreLogger(run_id).attach(events)
    keep = case["batch"] * steps
    trainer.train_images = trainer.train_images[:keep]
    trainer.train_targets = trainer.train_targets[:keep]
    return trainer


def _plain_loop(trainer, memory_format, amp_dtype):
    """The loop a PyTorch user would write by hand, on a fresh copy of the same architecture."""
    model = build_network(trainer.config, trainer.info, [0.5] * trainer.info["channels"],
                          [0.25] * trainer.info["channels"]).to(trainer.device, memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=trainer.config.lr)
    loss_fn = trainer.loss_fn
    images = trainer.train_images.to(trainer.device).contiguous(memory_format=memory_format)
    targets = trainer.train_targets.to(trainer.device)
    bs = trainer.config.batch_size

    def epoch() -> int:
        model.train()
        for first in range(0, len(images), bs):
            x, y = images[first:first + bs], targets[first:first + bs]
            with torch.autocast(trainer.device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
                loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return len(images)
    return epoch


def _timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    n = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def bench_case(name: str, rounds: int, steps: int, device: str) -> dict:
    case = CASES[name]
    trainer = _prepare_trainer(case, steps, device)
    amp = trainer.amp_dtype
    loops = {
        "engine": lambda: trainer.train_epoch(1) and len(trainer.train_images),
        "plain": _plain_loop(trainer, torch.channels_last, amp),
        "naive": _plain_loop(trainer, torch.contiguous_format, None),
    }
    for loop in loops.values():     # warm-up: allocator, cuDNN autotune, first-call overheads
        loop()
    samples: dict[str, list[float]] = {k: [] for k in loops}
    order = list(loops)
    for r in range(rounds):
        for key in (order if r % 2 == 0 else order[::-1]):
            samples[key].append(_timed(loops[key], trainer.device))
    ips = {k: statistics.median(v) for k, v in samples.items()}
    return {
        "model": name, "arch": case["arch"], "image_size": case["size"], "batch_size": case["batch"],
        "device": str(trainer.device), "amp": str(amp) if amp else "off", "threads": torch.get_num_threads(),
        "rounds": rounds, "steps_per_round": steps,
        "engine_ips": round(ips["engine"], 2), "plain_ips": round(ips["plain"], 2),
        "naive_ips": round(ips["naive"], 2), "ratio": round(ips["engine"] / ips["plain"], 3),
        "speedup": round(ips["engine"] / ips["naive"], 3),
        "samples": {k: [round(x, 2) for x in v] for k, v in samples.items()},
    }


def run_bench(model: str = "all", rounds: int = 6, steps: int = 5, device: str = "auto") -> dict:
    """Run the benchmark in a scratch workspace; the last case's figures are also the top-level keys."""
    names = list(CASES) if model == "all" else [model]
    previous = {k: os.environ.get(k) for k in ("LIGHTBOX_HOME", "LIGHTBOX_DB_URL")}
    with tempfile.TemporaryDirectory(prefix="lightbox-bench-") as scratch:
        os.environ["LIGHTBOX_HOME"] = scratch
        os.environ.pop("LIGHTBOX_DB_URL", None)
        try:
            cases = [bench_case(name, rounds, steps, device) for name in names]
        finally:
            for key, value in previous.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    headline = min(cases, key=lambda c: c["ratio"])     # the contract's keys report the worst case
    keys = ("engine_ips", "plain_ips", "ratio", "naive_ips", "speedup")
    return {**{k: headline[k] for k in keys}, "cases": cases}
