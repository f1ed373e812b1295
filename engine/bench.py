"""Training throughput: the Trainer against a minimal PyTorch loop on the same model, data and threads.

Measured alternately in one process (windows of the same loop vary 10–25 % on a shared CPU), median of rounds:
- engine_ips: Trainer.train_epoch with its real handlers (store logging, cancel checks, train metrics);
- plain_ips: a hand-written loop with the same memory format and precision (the engine's overhead = ratio);
- naive_ips: a hand-written NCHW fp32 loop (what the engine's defaults — channels_last, AMP on CUDA — buy).
ratio and speedup are medians of per-round ratios (the loops of one round ran seconds apart, so a change in the
machine's load cancels out), with their interquartile range and a 95 % bootstrap interval of the median.

data_wait: the share of each training step spent preparing its batch (gather, augment, copy to the device) with
a typical augmentation on, timed with the device synchronised (the step cannot start before its batch exists). On
CUDA it is measured for both data paths: augmentation on the host before the copy, and on the device (the default
there, engine.training.trainer's GPU data path).

The default is time-boxed (a few minutes even on a busy 2-core CPU); PRESETS["long"] is the full measurement.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from engine.config import RunConfig
from engine.data.demo import write_demo
from engine.data.ingest import ingest
from engine.models.network import build_network
from engine.runs.paths import run_dir
from engine.runs.submit import create_run
from engine.training.events import Events
from engine.training.augment import build_pipeline
from engine.training.handlers import StoreLogger
from engine.training.trainer import Trainer

CASES = {
    "unet": {"task": "segmentation", "arch": "unet", "size": 128, "batch": 16},
    "resnet18": {"task": "classification", "arch": "resnet18", "size": 224, "batch": 16},
}
# quick: the demo's U-Net, rounds until the time budget (seconds, set-up included) is spent, at least min_rounds;
# long: both models, fixed rounds (the figures in benchmarks/training.md; tens of minutes on a busy 2-core CPU)
PRESETS = {
    "quick": {"model": "unet", "batch": 8, "steps": 1, "rounds": None, "budget": 160.0, "min_rounds": 3,
              "max_rounds": 30},
    "long": {"model": "all", "batch": None, "steps": 8, "rounds": 8, "budget": None},
}
CONTRACT_KEYS = ("engine_ips", "plain_ips", "ratio", "naive_ips", "speedup")
BENCH_AUGMENT = ["hflip", "rotate", "zoom", "brightness", "contrast"]     # a typical augmentation for data_wait


class BenchLog:
    """Progress on stderr: every round in a terminal; in a log or pipe only a few plain lines per model."""

    def __init__(self, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.live = enabled and self.stream.isatty()

    def line(self, text: str) -> None:
        if self.enabled:
            print(f"bench: {text}", file=self.stream, flush=True)

    def detail(self, text: str) -> None:
        if self.live:
            self.line(text)


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


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def data_wait_share(trainer, on_device: bool, repeats: int = 3) -> float:
    """Share of each training step spent on its batch (gather, augment with BENCH_AUGMENT, copy), device synced."""
    saved = trainer.augmenter, trainer.augment_on_device
    trainer.augmenter, trainer.augment_on_device = build_pipeline(BENCH_AUGMENT), on_device
    bs = trainer.config.batch_size
    data = total = 0.0
    try:
        for _ in range(repeats):
            order = torch.randperm(len(trainer.train_images))
            for first in range(0, len(order) - bs + 1, bs):
                _sync(trainer.device)
                begin = time.perf_counter()
                images, targets = trainer._batch(order[first:first + bs])
                _sync(trainer.device)
                ready = time.perf_counter()
                trainer.step(images, targets)
                _sync(trainer.device)
                data, total = data + ready - begin, total + time.perf_counter() - begin
    finally:
        trainer.augmenter, trainer.augment_on_device = saved
    return round(data / total, 3) if total else 0.0


def data_wait(trainer, log: BenchLog, name: str) -> dict:
    """data_wait_share on this device; on CUDA for both data paths (augmenting on the host, and on the GPU)."""
    paths = {"host": False, "device": True} if trainer.device.type == "cuda" else {"host": False}
    shares = {path: data_wait_share(trainer, on_device) for path, on_device in paths.items()}
    if "device" in shares:
        log.line(f"{name}: the GPU waits for data {shares['host']:.0%} of each step when batches are augmented on "
                 f"the CPU, {shares['device']:.0%} when augmented on the GPU (the default)")
    else:
        log.line(f"{name}: each step spends {shares['host']:.0%} of its time preparing its augmented batch "
                 f"({trainer.device.type})")
    return {"augment": BENCH_AUGMENT, **shares}


def _timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    n = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def spread(values: list[float], seed: int = 0, resamples: int = 2000) -> dict:
    """Median, interquartile range and a 95 % bootstrap interval of the median (percentile method)."""
    data = np.asarray(values, dtype=np.float64)
    q1, q3 = np.percentile(data, [25, 75])
    draws = np.random.default_rng(seed).choice(data, size=(resamples, len(data)), replace=True)
    low, high = np.percentile(np.median(draws, axis=1), [2.5, 97.5])
    return {"median": round(float(np.median(data)), 3), "iqr": [round(float(q1), 3), round(float(q3), 3)],
            "ci95": [round(float(low), 3), round(float(high), 3)]}


def bench_case(name: str, rounds: int | None, steps: int, device: str, batch: int | None = None,
               size: int | None = None, deadline: float | None = None, min_rounds: int = 3, max_rounds: int = 15,
               log: BenchLog | None = None) -> dict:
    """Alternate the three loops for `rounds` rounds, or (rounds=None) until `deadline` (time.monotonic()) would
    be passed by one more round, but at least min_rounds and at most max_rounds."""
    log = log or BenchLog(enabled=False)
    case = {**CASES[name], **({"batch": batch} if batch else {}), **({"size": size} if size else {})}
    log.line(f"{name}: preparing {case['size']} px demo data and the trainer")
    trainer = _prepare_trainer(case, steps, device)
    amp = trainer.amp_dtype
    loops = {
        "engine": lambda: trainer.train_epoch(1) and len(trainer.train_images),
        "plain": _plain_loop(trainer, torch.channels_last, amp),
        "naive": _plain_loop(trainer, torch.contiguous_format, None),
    }
    started = time.monotonic()
    for loop in loops.values():     # warm-up: allocator, cuDNN autotune, first-call overheads
        loop()
    durations = [time.monotonic() - started]
    planned = f"{rounds} rounds" if rounds else f"{min_rounds}–{max_rounds} rounds as time allows"
    log.line(f"{name}: warm-up took {durations[0]:.0f} s; measuring {planned} of {steps} step{'s' * (steps > 1)} "
             f"× batch {case['batch']}")
    samples: dict[str, list[float]] = {k: [] for k in loops}
    order = list(loops)
    r = 0
    while _another_round(r, rounds, deadline, max(durations[-3:]), min_rounds, max_rounds):
        begin = time.monotonic()
        for key in (order if r % 2 == 0 else order[::-1]):
            samples[key].append(_timed(loops[key], trainer.device))
        durations, r = durations + [time.monotonic() - begin], r + 1
        log.detail(f"{name}: round {r}: ratio {samples['engine'][-1] / samples['plain'][-1]:.3f}, "
                   f"engine {samples['engine'][-1]:.1f} img/s")
    waits = data_wait(trainer, log, name)
    ips = {k: statistics.median(v) for k, v in samples.items()}
    ratio = spread([e / p for e, p in zip(samples["engine"], samples["plain"])])
    speedup = spread([e / n for e, n in zip(samples["engine"], samples["naive"])])
    log.line(f"{name}: ratio {ratio['median']:.3f} (95 % interval {ratio['ci95'][0]:.3f}–{ratio['ci95'][1]:.3f}, "
             f"{r} rounds), speed-up vs naive {speedup['median']:.2f}×")
    return {
        "model": name, "arch": case["arch"], "image_size": case["size"], "batch_size": case["batch"],
        "device": str(trainer.device), "amp": str(amp) if amp else "off", "threads": torch.get_num_threads(),
        "rounds": r, "steps_per_round": steps,
        "engine_ips": round(ips["engine"], 2), "plain_ips": round(ips["plain"], 2),
        "naive_ips": round(ips["naive"], 2), "ratio": ratio["median"], "speedup": speedup["median"],
        "ratio_iqr": ratio["iqr"], "ratio_ci95": ratio["ci95"],
        "speedup_iqr": speedup["iqr"], "speedup_ci95": speedup["ci95"],
        "samples": {k: [round(x, 2) for x in v] for k, v in samples.items()},
        "data_wait": waits,
    }


def _another_round(done: int, rounds: int | None, deadline: float | None, expected: float, min_rounds: int,
                   max_rounds: int) -> bool:
    """`expected`: the longest of the last three rounds (the warm-up before the first), with half as much again to
    spare: on a shared CPU one round can take twice as long as the one before."""
    if rounds is not None:
        return done < rounds
    if done < min_rounds:
        return True
    return done < max_rounds and (deadline is None or time.monotonic() + 1.5 * expected <= deadline)


def process_age() -> float:
    """Seconds since this process started (Linux /proc; 0 elsewhere): a command's budget includes importing torch,
    which alone takes half a minute on a busy 2-core machine."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def run_bench(model: str = "unet", rounds: int | None = None, steps: int = 1, device: str = "auto",
              batch: int | None = 8, size: int | None = None, budget: float | None = 160.0, min_rounds: int = 3,
              max_rounds: int = 30, log: BenchLog | None = None, started: float | None = None) -> dict:
    """Run the benchmark in a scratch workspace; the contract's keys report the case with the worst ratio.
    With a budget (seconds since `started`, a time.monotonic() value, default now) and no fixed rounds, rounds
    go on while the next one fits; each model gets an equal share of what is left."""
    log = log or BenchLog(enabled=False)
    names = list(CASES) if model == "all" else [model]
    start = time.monotonic() if started is None else started
    previous = {k: os.environ.get(k) for k in ("LIGHTBOX_HOME", "LIGHTBOX_DB_URL")}
    cases = []
    with tempfile.TemporaryDirectory(prefix="lightbox-bench-") as scratch:
        os.environ["LIGHTBOX_HOME"] = scratch
        os.environ.pop("LIGHTBOX_DB_URL", None)
        try:
            for i, name in enumerate(names):
                deadline = None
                if budget is not None and rounds is None:
                    now = time.monotonic()
                    deadline = now + (start + budget - now) / (len(names) - i)
                cases.append(bench_case(name, rounds, steps, device, batch, size, deadline, min_rounds, max_rounds,
                                        log))
        finally:
            for key, value in previous.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    seconds = round(time.monotonic() - start, 1)
    headline = min(cases, key=lambda c: c["ratio"])     # the contract's keys report the worst case
    timed = budget is not None and rounds is None
    over = timed and seconds > budget
    log.line(f"finished after {seconds:.0f} s" + (f" of a {budget:.0f} s budget" if timed else "")
             + (f", {seconds - budget:.0f} s over: at least {min_rounds} rounds are always measured, and on a shared "
                "CPU a round can run slower than those before it" if over else ""))
    return {**{k: headline[k] for k in CONTRACT_KEYS}, "model": headline["model"], "rounds": headline["rounds"],
            "ratio_iqr": headline["ratio_iqr"], "ratio_ci95": headline["ratio_ci95"],
            "speedup_ci95": headline["speedup_ci95"], "seconds": seconds, "budget_seconds": budget,
            "over_budget": over, "data_wait": headline["data_wait"], "cases": cases}
