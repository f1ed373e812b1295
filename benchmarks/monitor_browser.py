"""Does an open Monitor page slow training? The real thing: a Streamlit server and a Chromium tab.

One U-Net run trains in a worker process. The app runs as `streamlit run` (benchmarks/idle_cpu.py starts it the
same way) with one headless Chromium tab, which shows the Home page and the Monitor page in turn, --block epochs
each (switched with the sidebar menu, as a user would), so both conditions share the same stretch of machine
time. The first epoch of each block pays for the switch itself (a full page run, Plotly loading in the browser)
and is left out, so the medians compare steady states: a page left open. Reported: median epoch times of both
groups and the CPU time the server and the browser used in each, as a share of one core.

    .venv/bin/python benchmarks/monitor_browser.py [--epochs 25] [--block 3] [--n 400]

The browser runs on this machine too and its drawing competes with training here; in a classroom it runs on
each student's computer, so the server's share is the part a training server pays.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from idle_cpu import CHROMIUM_ARGS, cpu_seconds, free_port, wait_healthy  # noqa: E402

CONNECTED = "[data-testid='stApp'][data-test-connection-state='CONNECTED']"
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"


def descendants(root: int) -> set[int]:
    """Every live process below `root` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def cpu_of(pids: set[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except (OSError, IndexError):
            pass            # ended meanwhile
    return total


def show(tab, title: str) -> None:
    """Open a page from the sidebar menu and wait until it has drawn."""
    tab.locator("[data-testid='stSidebarNav'] a", has_text=title).first.click()
    tab.wait_for_selector(f"h1:has-text('{title if title != 'Home' else 'Lightbox'}')", timeout=120_000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--block", type=int, default=3, help="epochs per page before switching")
    parser.add_argument("--n", type=int, default=400)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="lightbox-monitor-")
    os.environ.update(LIGHTBOX_HOME=home, LIGHTBOX_NO_AUTOWORKER="1")
    os.environ.pop("LIGHTBOX_DB_URL", None)
    from playwright.sync_api import sync_playwright

    from engine.config import RunConfig
    from engine.data.demo import write_demo
    from engine.data.ingest import ingest
    from engine.runs import store, submit

    dataset_id = ingest(write_demo("segmentation", Path(home) / "src", n=args.n, size=128, seed=2),
                        task="segmentation").dataset_id
    run_id = submit.submit(RunConfig(dataset_id=dataset_id, arch="unet", epochs=args.epochs, batch_size=16,
                                     image_size=128))
    port = free_port()
    with open(Path(home) / "server.log", "wb") as log:
        server = subprocess.Popen([str(ROOT / ".venv" / "bin" / "streamlit"), "run", "streamlit_app.py",
                                   "--server.headless=true", f"--server.port={port}"], cwd=ROOT,
                                  env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    worker = None
    pw = sync_playwright().start()
    try:
        wait_healthy(port, server)
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        tab = browser.new_page()
        tab.goto(f"http://127.0.0.1:{port}/")
        tab.wait_for_selector(CONNECTED, timeout=120_000)
        tab.wait_for_selector(IDLE, timeout=120_000)
        worker = subprocess.Popen([sys.executable, "-m", "engine", "worker", "--until-idle", "--poll", "0.2"],
                                  cwd=ROOT, env=dict(os.environ), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        exclude = {server.pid, worker.pid}
        browser_pids = descendants(os.getpid()) - exclude
        monitored: dict[int, bool] = {}
        cpu: dict[int, tuple[float, float, float]] = {}   # epoch → (server s, browser s, wall s)
        mark = (cpu_seconds(server.pid), cpu_of(browser_pids), time.monotonic())
        while worker.poll() is None:
            epoch = (store.get_run(run_id)["epoch"] or 0) + 1      # the epoch now training
            if epoch not in monitored:
                now = (cpu_seconds(server.pid), cpu_of(browser_pids), time.monotonic())
                if monitored:
                    cpu[max(monitored)] = tuple(b - a for a, b in zip(mark, now))
                mark = now
                monitored[epoch] = (epoch - 1) // args.block % 2 == 1
                if (epoch - 1) % args.block == 0:
                    show(tab, "Monitor" if monitored[epoch] else "Home")
            time.sleep(0.05)
        browser.close()
    finally:
        pw.stop()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
    seconds = {m["epoch"]: m["value"] for m in store.get_metrics(run_id) if m["name"] == "epoch_seconds"}
    steady = [e for e in seconds if (e - 1) % args.block]      # not the epoch that switched pages (nor epoch 1)
    groups = {True: [e for e in steady if monitored.get(e)], False: [e for e in steady if not monitored.get(e)]}

    def share(epochs: list[int], index: int) -> float:
        used = sum(cpu[e][index] for e in epochs if e in cpu)
        wall = sum(cpu[e][2] for e in epochs if e in cpu)
        return round(100 * used / wall, 2) if wall else float("nan")

    on = statistics.median(seconds[e] for e in groups[True])
    off = statistics.median(seconds[e] for e in groups[False])
    print(json.dumps({
        "run_status": store.get_run(run_id)["status"], "epochs": args.epochs, "block": args.block,
        "epoch_s_home_page": {"median": round(off, 3), "n": len(groups[False])},
        "epoch_s_monitor_page": {"median": round(on, 3), "n": len(groups[True])},
        "slowdown_percent": round(100 * (on / off - 1), 2),
        "server_cpu_percent_of_one_core": {"home": share(groups[False], 0), "monitor": share(groups[True], 0)},
        "browser_cpu_percent_of_one_core": {"home": share(groups[False], 1), "monitor": share(groups[True], 1)},
        "epoch_seconds": seconds, "monitored": monitored,
    }, indent=2))


if __name__ == "__main__":
    main()
