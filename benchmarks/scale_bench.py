"""Throughput of N queued runs through the embedded worker vs through a local Ray instance (issue 16).

Each repeat queues N tiny runs (LeNet-5, 32 px, 2 epochs, a generated 48-image classification set), then starts
`python -m engine worker --until-idle --slots S [--executor ray]` and times it to its exit. From the store's own
timestamps, per run: queue -> claimed ('starting'), queue -> first training step ('running'), queue -> first
epoch's validation, and the run's life (queue -> finished). Ray's own start-up (ray.init of a local instance, and
its shutdown) is timed separately in fresh processes. Paths alternate (embedded, ray, embedded, ...) so a burst of
someone else's load hits both. Both paths run their runs with OMP_NUM_THREADS=1 (Ray's default for a 1-CPU task;
the embedded worker's children would otherwise use every core), so the difference is Ray's overhead, not threads.

Then a search of --trials trials the same size: all in one process (`engine search`) vs as Ray tasks, --slots
at once, each trial in its own process (`engine search --executor ray --parallel S`).

    .venv/bin/python benchmarks/scale_bench.py [--runs 6] [--slots 2] [--repeats 3] [--trials 4]
                                               [--out benchmarks/scale.json]
"""
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

RAY_INIT = """
import json, time
t0 = time.perf_counter()
import ray
t1 = time.perf_counter()
ray.init(address="local", num_cpus={slots}, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
t2 = time.perf_counter()
ray.get(ray.remote(lambda: 1).remote())
t3 = time.perf_counter()
ray.shutdown()
t4 = time.perf_counter()
print(json.dumps({{"import": t1 - t0, "init": t2 - t1, "first_task": t3 - t2, "shutdown": t4 - t3}}))
"""


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def queue_runs(dataset_id: str, n: int, tag: str) -> list[str]:
    from engine.config import RunConfig
    from engine.runs import submit
    return [submit.submit(RunConfig(dataset_id=dataset_id, arch="lenet5", epochs=2, batch_size=8, image_size=32,
                                    preview_samples=0, seed=i, name=f"{tag} {i}")) for i in range(n)]


def run_times(run_ids: list[str]) -> list[dict]:
    from sqlalchemy import func, select

    from engine.runs import store
    out = []
    with store.db().connect() as conn:
        for run_id in run_ids:
            run = store.get_run(run_id)
            first = {split: conn.execute(select(func.min(store.metrics.c.time)).where(
                store.metrics.c.run_id == run_id, store.metrics.c.split == split)).scalar() for split in ("train",
                                                                                                        "val")}
            out.append({"status": run["status"], "queued": run["created_at"], "claimed": run["started_at"],
                        "first_step": first["train"], "first_epoch": first["val"], "finished": run["finished_at"]})
    return out


def timed_command(cmd: list[str], what: str) -> tuple[subprocess.CompletedProcess, float, float, float]:
    """Run `cmd` in the checkout: (its result, start time, wall seconds, load before); a failure ends the bench."""
    before = load()
    started = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    wall = time.time() - started
    if done.returncode != 0:
        raise SystemExit(f"{what} failed: {done.stderr[-1500:]}")
    return done, started, wall, before


def one_repeat(executor: str, dataset_id: str, n: int, slots: int, tag: str) -> dict:
    run_ids = queue_runs(dataset_id, n, tag)
    cmd = [sys.executable, "-m", "engine", "worker", "--until-idle", "--slots", str(slots), "--poll", "0.2",
           "--json"] + (["--executor", "ray"] if executor == "ray" else [])
    _, started, wall, before = timed_command(cmd, f"{executor} worker")
    times = run_times(run_ids)
    assert all(t["status"] == "done" for t in times), [t["status"] for t in times]
    first_queued = min(t["queued"] for t in times)
    per_run = {key: [t[key] - t["queued"] for t in times] for key in ("claimed", "first_step", "first_epoch",
                                                                      "finished")}
    return {"executor": executor, "wall_s": wall, "runs_per_min": 60 * n / wall,
            "worker_start_to_first_claim_s": min(t["claimed"] for t in times) - started,
            "queue_to_last_finish_s": max(t["finished"] for t in times) - first_queued,
            "median_claim_to_first_step_s": statistics.median(t["first_step"] - t["claimed"] for t in times),
            "median_claim_to_finished_s": statistics.median(t["finished"] - t["claimed"] for t in times),
            "median_queue_to_s": {k: statistics.median(v) for k, v in per_run.items()},
            "load_before": before, "load_after": load()}


def one_search(executor: str, dataset_id: str, trials: int, slots: int, tag: str) -> dict:
    """A `trials`-trial search (same runs as above, random sampler, no pruning): all trials in one process, or as
    Ray tasks `slots` at once, each trial in its own process."""
    cmd = [sys.executable, "-m", "engine", "search", "--dataset", dataset_id, "--arch", "lenet5", "--epochs", "2",
           "--image-size", "32", "--batch-sizes", "8", "--trials", str(trials), "--sampler", "random",
           "--pruner", "none", "--name", tag, "--quiet", "--json"]
    if executor == "ray":
        cmd += ["--executor", "ray", "--parallel", str(slots)]
    done, _, wall, before = timed_command(cmd, f"{executor} search")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["states"]["complete"] == trials, result["states"]
    return {"executor": executor, "wall_s": wall, "trials_per_min": 60 * trials / wall, "load_before": before,
            "load_after": load()}


def ray_startup(slots: int, repeats: int) -> list[dict]:
    out = []
    for _ in range(repeats):
        done = subprocess.run([sys.executable, "-c", RAY_INIT.format(slots=slots)], capture_output=True, text=True,
                              check=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
        out.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return out


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trials", type=int, default=4, help="trials of the search measured after the runs")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "scale.json"))
    args = parser.parse_args()

    home = tempfile.mkdtemp(prefix="lightbox-scale-")
    os.environ.update(LIGHTBOX_HOME=home, OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0")
    os.environ.pop("LIGHTBOX_DB_URL", None)
    from engine.data.demo import write_demo
    from engine.data.ingest import ingest
    dataset_id = ingest(write_demo("classification", Path(home) / "src", n=48, size=32, seed=1),
                        task="classification").dataset_id

    results = {"runs": args.runs, "slots": args.slots, "trials": args.trials, "cpus": os.cpu_count(), "repeats": [],
               "searches": [],
               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    results["ray_startup"] = ray_startup(args.slots, args.repeats)
    for r in range(args.repeats):
        for executor in ("embedded", "ray"):
            rep = one_repeat(executor, dataset_id, args.runs, args.slots, f"{executor}-{r}")
            results["repeats"].append(rep)
            print(json.dumps(rep), flush=True)
    for r in range(args.repeats):
        for executor in ("local", "ray"):
            rep = one_search(executor, dataset_id, args.trials, args.slots, f"search-{executor}-{r}")
            results["searches"].append(rep)
            print(json.dumps(rep), flush=True)
    summary = {}
    for executor in ("embedded", "ray"):
        reps = [x for x in results["repeats"] if x["executor"] == executor]
        summary[executor] = {
            "wall_s": spread([x["wall_s"] for x in reps]),
            "runs_per_min": spread([x["runs_per_min"] for x in reps]),
            "worker_start_to_first_claim_s": spread([x["worker_start_to_first_claim_s"] for x in reps]),
            "median_claim_to_first_step_s": spread([x["median_claim_to_first_step_s"] for x in reps]),
            "median_claim_to_finished_s": spread([x["median_claim_to_finished_s"] for x in reps]),
            **{f"median_queue_to_{k}_s": spread([x["median_queue_to_s"][k] for x in reps])
               for k in ("claimed", "first_step", "first_epoch", "finished")}}
    walls = {e: statistics.median(x["wall_s"] for x in results["repeats"] if x["executor"] == e)
             for e in ("embedded", "ray")}
    for executor in ("local", "ray"):
        reps = [x for x in results["searches"] if x["executor"] == executor]
        summary[f"search_{executor}"] = {"wall_s": spread([x["wall_s"] for x in reps]),
                                        "trials_per_min": spread([x["trials_per_min"] for x in reps])}
    summary["ray_overhead_per_run_s"] = (walls["ray"] - walls["embedded"]) / args.runs
    summary["ray_startup"] = {k: spread([x[k] for x in results["ray_startup"]])
                              for k in ("import", "init", "first_task", "shutdown")}
    results["summary"] = summary
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
