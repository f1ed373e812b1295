"""Queue stress: N queued tiny runs, a worker, and 3 UI-like readers polling the store every second.

Records submit-to-start latency, reader query latency (p50/p95) and checks that no metric row is lost
(every run has one loss row per optimizer step, contiguous, and one validation row per epoch).

    .venv/bin/python benchmarks/queue_stress.py [--runs 50] [--slots 2] [--db-url URL]
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def reader(home: str, url: str, stop, out: "mp.Queue") -> None:
    """Polls like the Monitor and Compare pages: run list, counts, and the newest running run's metrics."""
    os.environ["LIGHTBOX_HOME"] = home
    if url:
        os.environ["LIGHTBOX_DB_URL"] = url
    from engine.runs import store
    latencies = []
    while not stop.is_set():
        started = time.perf_counter()
        runs = store.list_runs()
        store.run_counts()
        running = [r for r in runs if r["status"] == "running"]
        if running:
            store.get_metrics(running[0]["id"])
        latencies.append((time.perf_counter() - started) * 1000)
        stop.wait(max(0.0, 1.0 - (time.perf_counter() - started)))
    out.put(latencies)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(math.ceil(q * len(ordered))) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--db-url", default="")
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="lightbox-stress-")
    os.environ["LIGHTBOX_HOME"] = home
    if args.db_url:
        os.environ["LIGHTBOX_DB_URL"] = args.db_url
    from engine.config import RunConfig
    from engine.data.dataset import load_manifest
    from engine.data.demo import write_demo
    from engine.data.ingest import ingest
    from engine.runs import store, submit

    dataset_id = ingest(write_demo("classification", Path(home) / "src", n=24, size=32, seed=1),
                        task="classification").dataset_id
    train_n = sum(s["split"] == "train" for s in load_manifest(dataset_id)["samples"])
    config = dict(dataset_id=dataset_id, arch="lenet5", epochs=2, batch_size=4, image_size=32, preview_samples=1)
    run_ids, submitted = [], {}
    for i in range(args.runs):
        run_id = submit.submit(RunConfig(**config, seed=i))
        run_ids.append(run_id)
        submitted[run_id] = time.time()

    ctx = mp.get_context("spawn")
    results: mp.Queue = ctx.Queue()
    stop = ctx.Event()
    readers = [ctx.Process(target=reader, args=(home, args.db_url, stop, results)) for _ in range(3)]
    started = time.time()
    for r in readers:
        r.start()
    worker = subprocess.Popen([sys.executable, "-m", "engine", "worker", "--slots", str(args.slots),
                               "--until-idle", "--poll", "0.2"], cwd=ROOT, env=dict(os.environ),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = worker.communicate()
    wall = time.time() - started
    stop.set()
    reader_ms: list[float] = []
    for _ in readers:
        reader_ms += results.get(timeout=60)
    for r in readers:
        r.join()
    runs = {rid: store.get_run(rid) for rid in run_ids}
    latency = [runs[r]["started_at"] - submitted[r] for r in run_ids if runs[r]["started_at"]]
    # Queue wait grows with position; the worker's own pick-up delay is the gap after a slot frees up.
    starts = sorted(runs[r]["started_at"] for r in run_ids)
    ends = sorted(runs[r]["finished_at"] for r in run_ids)
    pickup = [s - e for s, e in zip(starts[args.slots:], ends[: len(ends) - args.slots])]

    steps_per_epoch = math.ceil(train_n / config["batch_size"])
    if train_n % config["batch_size"] == 1:
        steps_per_epoch -= 1
    lost = []
    for rid in run_ids:
        rows = store.get_metrics(rid)
        steps = [m["step"] for m in rows if m["split"] == "train" and m["name"] == "loss"]
        val_epochs = [m["epoch"] for m in rows if m["split"] == "val" and m["name"] == "accuracy"]
        if steps != list(range(1, config["epochs"] * steps_per_epoch + 1)) or val_epochs != [1, 2]:
            lost.append(rid)
    report = {
        "runs": args.runs, "slots": args.slots, "db": store.db().dialect.name, "wall_seconds": round(wall, 1),
        "statuses": sorted({r["status"] for r in runs.values()}),
        "submit_to_start_s": {"min": round(min(latency), 2), "p50": round(statistics.median(latency), 2),
                              "max": round(max(latency), 2)},
        "slot_pickup_s": {"p50": round(statistics.median(pickup), 2), "p95": round(percentile(pickup, 0.95), 2)},
        "runs_with_missing_rows": lost, "worker_rc": worker.returncode,
    }
    if reader_ms:
        report["reader_query_ms"] = {"n": len(reader_ms), "p50": round(percentile(reader_ms, 0.5), 1),
                                     "p95": round(percentile(reader_ms, 0.95), 1)}
    if worker.returncode:
        report["worker_err"] = err.decode()[-1000:]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
