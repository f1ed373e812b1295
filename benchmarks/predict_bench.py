"""Prediction speed on this machine's CPU, through the path users hit (Predictor.predict_array / predict_arrays).

Trains a 1-epoch U-Net (256 px) and ResNet-18 (224 px) on tiny demo datasets in a throw-away workspace, then
times warm single-image latency (p50/p95) and batch-16 throughput. Run from the repository root:

    .venv/bin/python benchmarks/predict_bench.py [--rounds 40] [--repeats 3] [--write benchmarks/predict.md]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES = (  # (label, task, arch, size, model options)
    ("U-Net (depth 4, base 16)", "segmentation", "unet", 256, {}),
    ("ResNet-18", "classification", "resnet18", 224, {}),
)
BATCH = 16


def build_run(task: str, arch: str, size: int, options: dict, scratch: Path) -> str:
    """A real run: demo data → ingest → 1 epoch through the runner (as `engine train` does)."""
    from engine.config import RunConfig
    from engine.data.demo import write_demo
    from engine.data.ingest import ingest
    from engine.runs import execute
    from engine.runs.submit import create_run
    src = write_demo(task, scratch / task, n=12, size=size, seed=0)
    config = RunConfig(dataset_id=ingest(src, task=task).dataset_id, arch=arch, epochs=1, batch_size=4,
                       image_size=size, model_options=options, device="cpu", preview_samples=0)
    run_id = create_run(config, status="running")
    run = execute.run_job(run_id)
    if run["status"] != "done":
        raise SystemExit(f"training {arch} failed: {run['message']}")
    return run_id


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(run_id: str, size: int, rounds: int) -> dict:
    import numpy as np
    import torch

    from engine.inference.predict import load_predictor
    predictor = load_predictor(run_id, device="cpu")
    rng = np.random.default_rng(0)
    images = [rng.random((predictor.channels, size, size), dtype=np.float32) for _ in range(BATCH)]
    for image in images[:3]:
        predictor.predict_array(image)                       # warm-up: first calls allocate and pick kernels
    x = predictor.preprocess(images[0])[None].contiguous(memory_format=torch.channels_last)
    single, forward = [], []
    for i in range(rounds):         # alternate with the bare forward pass, so load from other jobs hits both alike
        start = time.perf_counter()
        predictor.predict_array(images[i % BATCH])
        single.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        with torch.inference_mode():
            predictor.model(x)
        forward.append((time.perf_counter() - start) * 1000)
    predictor.predict_arrays(images)
    xs = torch.stack([predictor.preprocess(image) for image in images]).contiguous(memory_format=torch.channels_last)
    batch, batch_forward = [], []
    for _ in range(max(3, rounds // 8)):
        start = time.perf_counter()
        predictor.predict_arrays(images)
        batch.append(BATCH / (time.perf_counter() - start))
        start = time.perf_counter()
        with torch.inference_mode():
            predictor.model(xs)
        batch_forward.append(BATCH / (time.perf_counter() - start))
    return {"p50": percentile(single, 0.5), "p95": percentile(single, 0.95), "min": min(single),
            "forward_p50": percentile(forward, 0.5),
            "ips": statistics.median(batch), "forward_ips": statistics.median(batch_forward),
            "rounds": rounds, "batch_rounds": len(batch)}


def machine() -> str:
    import torch
    cpu = platform.processor() or "CPU"
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{cpu}; {os.cpu_count()} logical CPUs visible, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads; load average at the end {load} (shared with other engineers' jobs)")


def report(rows: list[tuple[int, str, int, dict]], command: str, rounds: int) -> str:
    lines = [
        "# Prediction speed (CPU)", "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC with `{command}`.", "",
        f"Machine: {machine()}.", "",
        "Path timed: `Predictor.predict_array` (one image: float16 parity cast, resize, channels_last forward, "
        "argmax/upsample and class areas; the overlay is drawn only when shown) and `Predictor.predict_arrays` "
        "(16 images in one forward pass). Models come from real 1-epoch runs through the runner; inputs are random "
        "images at the training size. Warm: 3 calls before timing. 'Bare forward' is `model(x)` alone on a prepared "
        "tensor, timed alternately with the full call: the gap is what reading the answer out costs. Each repeat "
        "measures both models again in the same process; 'load' is the 1-minute load average just before it.", "",
        f"Single image: {rounds} calls per repeat. Batch: median of {max(3, rounds // 8)} batches of {BATCH}.", "",
        "| repeat | model | input | load | single p50 | p95 | min | bare forward p50 | batch 16 | bare forward batch 16 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for repeat, label, size, r in rows:
        lines.append(f"| {repeat} | {label} | {size}×{size} | {r['load']:.1f} | {r['p50']:.1f} ms "
                     f"| {r['p95']:.1f} ms | {r['min']:.1f} ms | {r['forward_p50']:.1f} ms | {r['ips']:.1f} img/s "
                     f"| {r['forward_ips']:.1f} img/s |")
    lines += ["", "Median over repeats:", "",
              "| model | single p50 | p95 | min | batch 16 |", "|---|---|---|---|---|"]
    for label in dict.fromkeys(label for _, label, _, _ in rows):
        mine = [r for _, name, _, r in rows if name == label]
        mid = {k: statistics.median(r[k] for r in mine) for k in ("p50", "p95", "min", "ips")}
        lines.append(f"| {label} | {mid['p50']:.1f} ms | {mid['p95']:.1f} ms | {mid['min']:.1f} ms "
                     f"| {mid['ips']:.1f} img/s |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", default=None, help="Markdown file to write the report to")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lightbox-bench-") as tmp:
        os.environ["LIGHTBOX_HOME"] = str(Path(tmp) / "ws")
        os.environ.pop("LIGHTBOX_DB_URL", None)
        runs = [(label, size, build_run(task, arch, size, options, Path(tmp)))
                for label, task, arch, size, options in CASES]
        rows = []
        for repeat in range(1, args.repeats + 1):
            for label, size, run_id in runs:
                load = os.getloadavg()[0]
                rows.append((repeat, label, size, {"load": load, **measure(run_id, size, args.rounds)}))
                print(f"repeat {repeat} {label}: {rows[-1][3]}", file=sys.stderr)
    command = f".venv/bin/python benchmarks/predict_bench.py --rounds {args.rounds} --repeats {args.repeats}"
    text = report(rows, command, args.rounds)
    if args.write:
        Path(args.write).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
