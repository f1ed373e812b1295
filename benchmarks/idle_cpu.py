"""How much CPU does the Streamlit server burn while the app sits open in a browser and nobody clicks?

Starts `streamlit run streamlit_app.py` on a free port with a fresh LIGHTBOX_HOME and no auto-worker, opens the
app in headless Chromium (one or more tabs, on one page), waits until every tab has drawn, then reads the server
process's CPU time (utime + stime from /proc/PID/stat) over a window and reports it as a share of one core.

    .venv/bin/python benchmarks/idle_cpu.py [--seconds 60] [--tabs 1] [--page monitor] [--run running|done]
                                            [--set server.fileWatcherType=none ...] [--app DIR]

--run adds one fake run to the store first (a finished one, or a running one that keeps heartbeating, so pages
that poll while a run is live can be measured without training). --app runs the streamlit_app.py of another copy
of the project with this one's .venv, e.g. the commit before a change:
`git archive COMMIT | tar -x -C /tmp/before` then `--app /tmp/before`. Linux only (reads /proc).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(port: int, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"streamlit exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit("streamlit did not answer its health check in time")


def add_run(kind: str, stop: threading.Event) -> threading.Thread | None:
    """One fake U-Net run in the store, as a trainer leaves it after 6 of 10 epochs (50 steps each, a sample
    picture); a 'running' one gets a heartbeat every few seconds, as a trainer would give, so the Monitor polls."""
    import numpy as np
    from PIL import Image

    from engine.config import RunConfig
    from engine.runs import store
    from engine.runs.paths import run_dir
    config = RunConfig(dataset_id="demo-none", arch="unet", task="segmentation", name="idle benchmark", epochs=10)
    run_id = store.insert_run(config.to_dict(), status="running" if kind == "running" else "done")
    rows = []
    for epoch in range(1, 7):
        rows += [(epoch, s, "train", "loss", 1.0 / s) for s in range(epoch * 50 - 49, epoch * 50 + 1)]
        rows += [(epoch, epoch * 50, split, name, 0.1 * epoch) for split, name in
                 (("val", "dice"), ("val", "iou"), ("val", "loss"), ("train", "epoch_loss"), ("train", "dice"))]
        rows.append((epoch, epoch * 50, "train", "epoch_seconds", 5.0))
    store.log_metrics(run_id, rows)
    store.update_run(run_id, epoch=6, progress=0.6, best_metric="dice", best_value=0.6, best_epoch=6)
    (run_dir(run_id) / "samples").mkdir(parents=True)
    picture = np.random.default_rng(0).integers(0, 255, (512, 384, 3), dtype=np.uint8)
    Image.fromarray(picture).save(run_dir(run_id) / "samples" / "epoch_006.png")
    if kind != "running":
        return None

    def beat() -> None:
        while not stop.wait(5):
            store.update_run(run_id, heartbeat_at=store.now())
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    return thread


def open_tabs(port: int, page: str, tabs: int):
    from playwright.sync_api import sync_playwright
    pw = sync_playwright().start()
    browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
    pages = []
    for _ in range(tabs):
        tab = browser.new_page()
        tab.goto(f"http://127.0.0.1:{port}/{page}")
        tab.wait_for_selector("[data-testid='stApp'][data-test-connection-state='CONNECTED']", timeout=120_000)
        tab.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=120_000)
        pages.append(tab)
    return pw, browser, pages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60, help="length of the measured window")
    parser.add_argument("--warmup", type=float, default=10, help="seconds to wait after the tabs have drawn")
    parser.add_argument("--tabs", type=int, default=1)
    parser.add_argument("--page", default="", help="URL path of the page to open ('' is Home, 'monitor', ...)")
    parser.add_argument("--run", choices=["none", "done", "running"], default="none")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a Streamlit option for the server, e.g. server.fileWatcherType=none")
    parser.add_argument("--app", type=Path, default=ROOT, help="folder of the streamlit_app.py to serve")
    args = parser.parse_args()

    home = tempfile.mkdtemp(prefix="lightbox-idle-")
    os.environ.update(LIGHTBOX_HOME=home, LIGHTBOX_NO_AUTOWORKER="1")
    os.environ.pop("LIGHTBOX_DB_URL", None)
    stop = threading.Event()
    if args.run != "none":
        add_run(args.run, stop)
    port = free_port()
    options = [f"--{kv.split('=', 1)[0]}={kv.split('=', 1)[1]}" for kv in args.set]
    log_path = Path(home) / "server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen([str(ROOT / ".venv" / "bin" / "streamlit"), "run", "streamlit_app.py",
                                   "--server.headless=true", f"--server.port={port}", *options],
                                  cwd=args.app, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    pw = browser = None
    try:
        wait_healthy(port, server)
        pw, browser, _ = open_tabs(port, args.page, args.tabs)
        time.sleep(args.warmup)
        windows, started = [], time.monotonic()
        before = cpu_seconds(server.pid)
        mark, mark_t = before, started
        while (elapsed := time.monotonic() - started) < args.seconds:
            time.sleep(min(10.0, args.seconds - elapsed))
            now_cpu, now_t = cpu_seconds(server.pid), time.monotonic()
            windows.append(round(100 * (now_cpu - mark) / (now_t - mark_t), 2))
            mark, mark_t = now_cpu, now_t
        total = 100 * (mark - before) / (mark_t - started)
        text = log_path.read_text(errors="replace")
        print(json.dumps({
            "app": str(args.app), "page": args.page or "home", "tabs": args.tabs, "run": args.run, "options": args.set,
            "seconds": round(mark_t - started, 1), "server_cpu_percent_of_one_core": round(total, 2),
            "per_10s_windows": windows, "inotify_overflow_lines": text.count("Inotify queue overflowed"),
            "server_log_lines": len(text.splitlines()),
        }, indent=2))
    finally:
        stop.set()
        if browser is not None:
            browser.close()
        if pw is not None:
            pw.stop()
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
