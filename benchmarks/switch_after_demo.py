"""Repeat the walkthrough step "Home → demo button → Train a U-Net → Monitor" in a real browser and record, per
attempt, when the Monitor title appears and whether the browser's Streamlit client broke (a "Bad delta path"
error in the console, after which the client closes its websocket and the page stays blank until a reload).

    .venv/bin/python benchmarks/switch_after_demo.py [--root CHECKOUT] [--attempts 12] [--watch 20]

Each attempt starts its own server, workspace and worker, and kills them afterwards. Results: benchmarks/monitor.md
("Monitor blank after the demo button"). Needs Debian's /usr/bin/chromium and Playwright for Python.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
BROKEN = ("Bad delta path", "WS CLOSE", "PAGE CRASH")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_workspace_processes(home: str) -> None:
    """The app starts a worker (and it a training process) in the workspace: stop every process that has it."""
    marker = f"LIGHTBOX_HOME={home}".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker in Path(f"/proc/{pid}/environ").read_bytes():
                os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass


def attempt(browser, root: Path, watch: float) -> dict:
    home, port = tempfile.mkdtemp(prefix="lightbox-switch-"), free_port()
    env = {**os.environ, "LIGHTBOX_HOME": home}
    server = subprocess.Popen([str(root / ".venv/bin/streamlit"), "run", "streamlit_app.py", "--server.headless",
                               "true", "--server.port", str(port)], cwd=root, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    events: list[str] = []
    try:
        page = browser.new_page()
        page.on("console", lambda m: events.append(f"{m.type}: {m.text}"))
        page.on("crash", lambda _: events.append("PAGE CRASH"))
        page.on("websocket", lambda ws: ws.on("close", lambda _: events.append("WS CLOSE")))
        for _ in range(60):
            try:
                page.goto(f"http://127.0.0.1:{port}/", timeout=5000)
                break
            except Exception:  # noqa: BLE001 - the server is still starting
                time.sleep(1)
        page.get_by_role("button", name="Use the cardiac MRI demo").click(timeout=60000)
        page.get_by_role("button", name=re.compile("Train a")).click(timeout=120000)
        start = time.time()
        page.wait_for_url(re.compile("monitor"), timeout=60000)
        url_s, title_s = time.time() - start, None
        for _ in range(60):
            try:
                if "Monitor" in page.locator("[data-testid='stMain'] h1").first.inner_text(timeout=500):
                    title_s = time.time() - start
                    break
            except Exception:  # noqa: BLE001 - not drawn yet
                time.sleep(0.5)
        time.sleep(watch)          # the run goes from queued to running meanwhile: the page reruns
        broken = [e.splitlines()[0][:160] for e in events if any(b in e for b in BROKEN)]
        page.close()
        return {"monitor_url_s": round(url_s, 2), "title_s": title_s and round(title_s, 2),
                "ok": title_s is not None and not broken, "broken": broken}
    finally:
        server.terminate()
        server.wait(20)
        kill_workspace_processes(home)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--attempts", type=int, default=12)
    parser.add_argument("--watch", type=float, default=20.0, help="seconds to keep watching after the title")
    args = parser.parse_args()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        for i in range(args.attempts):
            print(json.dumps({"attempt": i, **attempt(browser, args.root, args.watch)}), flush=True)
        browser.close()


if __name__ == "__main__":
    main()
