"""One run on 2 gloo CPU processes (RunConfig.devices=2) vs one process, same global batch, on this machine.

    .venv/bin/python benchmarks/ddp_cpu.py [--repeats 3] [--out benchmarks/scale_ddp_quiet.json]

Arms, interleaved: 1 process with every core's thread, 1 process with 1 thread, 2 processes with 1 thread each
(cores / 2 threads each in general). Figures: the store's per-epoch seconds (train + validation on rank 0), and the
run's wall clock including starting the second process."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LIGHTBOX_HOME", tempfile.mkdtemp(prefix="lightbox-ddp-bench-"))
os.environ.setdefault("LIGHTBOX_NO_AUTOWORKER", "1")

from engine.data import demo
from engine.data.ingest import ingest
from engine.runs import store

SETTINGS = ["--arch", "unet", "--image-size", "64", "--batch-size", "16", "--epochs", "3", "--seed", "0",
            "--preview-samples", "0", "--device", "cpu"]


def arm(dataset_id: str, devices: int, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "engine", "train", "--dataset", dataset_id, *SETTINGS,
                          "--devices", str(devices), "--json", "--quiet"], env=env, capture_output=True, text=True, check=True)
    wall = time.monotonic() - started
    result = json.loads(out.stdout.strip().splitlines()[-1])
    metrics = store.get_metrics(result["run_id"])
    seconds = [m["value"] for m in metrics if m["name"] == "epoch_seconds"]
    losses = [round(m["value"], 4) for m in metrics if m["split"] == "val" and m["name"] == "loss"]
    return {"devices": devices, "threads_per_process": threads, "epoch_seconds": [round(s, 2) for s in seconds],
            "run_wall_seconds": round(wall, 1), "val_loss": losses, "load1": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "scale_ddp_quiet.json"))
    args = parser.parse_args()
    cores = os.cpu_count() or 2
    folder = demo.write_demo("segmentation", Path(os.environ["LIGHTBOX_HOME"]) / "src", n=160, size=64, seed=0)
    dataset_id = ingest(folder, task="segmentation").dataset_id
    arms = [(1, cores), (1, 1), (2, max(1, cores // 2))]
    results = {"cores": cores, "uptime_before": os.popen("uptime").read().strip(), "runs": []}
    for rep in range(args.repeats):
        for devices, threads in (arms if rep % 2 == 0 else arms[::-1]):
            row = {"rep": rep + 1, **arm(dataset_id, devices, threads)}
            results["runs"].append(row)
            print(json.dumps(row), flush=True)
    results["uptime_after"] = os.popen("uptime").read().strip()
    summary = {}
    for devices, threads in arms:
        rows = [r for r in results["runs"] if (r["devices"], r["threads_per_process"]) == (devices, threads)]
        summary[f"{devices} process(es) x {threads} thread(s)"] = {
            "median_epoch_seconds": statistics.median(s for r in rows for s in r["epoch_seconds"][1:]),
            "median_run_wall_seconds": statistics.median(r["run_wall_seconds"] for r in rows)}
    results["summary"] = summary
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
