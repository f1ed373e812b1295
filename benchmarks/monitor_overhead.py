"""Does an open Monitor page slow training? Epochs alternate between 'Monitor refreshing' and 'no Monitor'.

One U-Net run trains in a worker process. A second process plays the Monitor page's server side every
POLL_SECONDS while monitoring is on: with --mode fragment it reruns only the live panel (what
st.fragment(run_every=...) reruns in the browser session), with --mode page the whole page script (an upper
bound: a full rerun also lists all runs and draws the header). Monitoring is switched on for even epochs and off for odd ones,
so both conditions share the same stretch of machine time; the medians of epoch times are compared.

    .venv/bin/python benchmarks/monitor_overhead.py [--epochs 20] [--n 400]
"""
from __future__ import annotations

import argparse
import json
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


def live_panel_only(run_id: str, root: str) -> None:
    import sys
    sys.path.insert(0, root)
    from engine.runs import store
    from pages.monitor import live_panel
    live_panel(run_id, store.get_run(run_id)["status"])


def monitor_page(home: str, run_id: str, mode: str, on, stop, out) -> None:
    """Re-run the Monitor page (or its live panel) while `on` is set; report how long each refresh took."""
    os.environ["LIGHTBOX_HOME"] = home
    os.environ["LIGHTBOX_NO_AUTOWORKER"] = "1"
    os.chdir(ROOT)
    from streamlit.testing.v1 import AppTest

    from pages.monitor import POLL_SECONDS
    if mode == "page":
        at = AppTest.from_file(str(ROOT / "pages" / "monitor.py"), default_timeout=60)
        at.session_state["run_id"] = run_id
    else:
        at = AppTest.from_function(live_panel_only, args=(run_id, str(ROOT)), default_timeout=60)
    durations = []
    while not stop.is_set():
        if on.is_set():
            started = time.perf_counter()
            at.run()
            durations.append(time.perf_counter() - started)
            stop.wait(max(0.0, POLL_SECONDS - (time.perf_counter() - started)))
        else:
            stop.wait(0.1)
    out.put(durations)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--mode", choices=["fragment", "page"], default="fragment")
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="lightbox-monitor-")
    os.environ["LIGHTBOX_HOME"] = home
    from engine.config import RunConfig
    from engine.data.dataset import load_manifest
    from engine.data.demo import write_demo
    from engine.data.ingest import ingest
    from engine.runs import store, submit

    dataset_id = ingest(write_demo("segmentation", Path(home) / "src", n=args.n, size=128, seed=2),
                        task="segmentation").dataset_id
    run_id = submit.submit(RunConfig(dataset_id=dataset_id, arch="unet", epochs=args.epochs, batch_size=16,
                                   image_size=128))
    ctx = mp.get_context("spawn")
    on, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    page = ctx.Process(target=monitor_page, args=(home, run_id, args.mode, on, stop, out))
    page.start()
    worker = subprocess.Popen([sys.executable, "-m", "engine", "worker", "--until-idle", "--poll", "0.2"],
                              cwd=ROOT, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    monitored: dict[int, bool] = {}
    while worker.poll() is None:
        epoch = (store.get_run(run_id)["epoch"] or 0) + 1      # the epoch now training
        if epoch not in monitored:
            monitored[epoch] = epoch % 2 == 0
            (on.set if monitored[epoch] else on.clear)()
        time.sleep(0.05)
    stop.set()
    refreshes = out.get(timeout=120)
    page.join()
    seconds = {m["epoch"]: m["value"] for m in store.get_metrics(run_id) if m["name"] == "epoch_seconds"}
    # Epoch 1 includes model warm-up; leave it out of both groups.
    with_page = [s for e, s in seconds.items() if e > 1 and monitored.get(e)]
    without = [s for e, s in seconds.items() if e > 1 and not monitored.get(e)]
    report = {
        "mode": args.mode, "run_status": store.get_run(run_id)["status"], "epochs": args.epochs,
        "train_images": sum(s["split"] == "train" for s in load_manifest(dataset_id)["samples"]),
        "epoch_s_without_monitor": {"median": round(statistics.median(without), 3), "n": len(without)},
        "epoch_s_with_monitor": {"median": round(statistics.median(with_page), 3), "n": len(with_page)},
        "slowdown_percent": round(100 * (statistics.median(with_page) / statistics.median(without) - 1), 2),
        "page_refreshes": len(refreshes),
        "refresh_ms": {"p50": round(1000 * statistics.median(refreshes), 1),
                       "max": round(1000 * max(refreshes), 1)} if refreshes else None,
        "epoch_seconds": seconds, "monitored": monitored,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
