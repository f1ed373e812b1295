"""Fixtures for the real-browser test: a Streamlit server on a private workspace, and Debian's Chromium.

The server runs exactly as a user starts it (`streamlit run streamlit_app.py`), so the app starts its own
background training worker; teardown stops the server's process group and every worker or training process
that belongs to this test's workspace, and nothing else.
"""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "e2e" / "artifacts"
CHROMIUM = os.environ.get("LIGHTBOX_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic"]
VIEWPORT = {"width": 1400, "height": 1000}
START_TIMEOUT = 90           # seconds for the server to answer its health check


@dataclass
class Server:
    url: str
    home: Path
    proc: subprocess.Popen
    log: Path

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.log, lines)


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} is missing)"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


# ---- finding and stopping this workspace's processes ------------------------------------------------------

def _belongs_to(pid: int, home: Path) -> bool:
    """True when the process runs with LIGHTBOX_HOME set to this workspace (guards against reused pids)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"LIGHTBOX_HOME={home}".encode() in environ


def _workers_in_db(home: Path) -> list[int]:
    """Worker pids recorded in the workspace's store (the app registers each worker it starts)."""
    db = home / "lightbox.db"
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            rows = conn.execute("SELECT pid, host FROM lb_workers WHERE pid > 0").fetchall()
    except sqlite3.Error:
        return []
    return [pid for pid, host in rows if host == socket.gethostname()]


def _workspace_processes(home: Path) -> list[int]:
    """Every process of ours started with this LIGHTBOX_HOME: server, worker, training children."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid() and _belongs_to(int(entry.name), home):
            pids.append(int(entry.name))
    return pids


def _signal(pid: int, sig: int, group: bool) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_everything(server: Server) -> None:
    """Stop the server's process group, then the workers it started (their own sessions), then stragglers."""
    _signal(server.proc.pid, signal.SIGTERM, group=True)     # first, so no rerun starts another worker
    try:
        server.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        _signal(server.proc.pid, signal.SIGKILL, group=True)
        server.proc.wait(timeout=10)
    workers = [pid for pid in _workers_in_db(server.home) if _belongs_to(pid, server.home)]
    for pid in workers:
        # Each worker leads its own session (start_new_session=True): its group holds its training children.
        try:
            leader = os.getpgid(pid) == pid
        except ProcessLookupError:
            continue
        _signal(pid, signal.SIGTERM, group=leader)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _workspace_processes(server.home):
        time.sleep(0.2)
    for pid in _workspace_processes(server.home):   # not registered yet, or slow to stop
        _signal(pid, signal.SIGKILL, group=False)


# ---- fixtures ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("lightbox_home").resolve()
    port = _free_port()
    env = os.environ.copy()
    env["LIGHTBOX_HOME"] = str(home)
    env.pop("LIGHTBOX_NO_AUTOWORKER", None)      # the app must start its own worker: that is under test
    env.pop("LIGHTBOX_DB_URL", None)             # a private SQLite store in the workspace
    # Training on one thread leaves a core to the server and the browser, so the Monitor's 2-second redraws
    # come on time while the run trains (and the test stays light on a shared 2-core machine).
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
    env["LIGHTBOX_MONITOR_SECONDS"] = "2"     # a 2-epoch run is short: redraw often enough to see it grow
    log = home / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none"],          # edits in the checkout must not rerun the app
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    running = Server(url=f"http://127.0.0.1:{port}", home=home, proc=proc, log=log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _healthy(running.url):
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with {proc.returncode}:\n{running.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit did not answer /_stcore/health in {START_TIMEOUT} s:\n{running.log_tail()}")
            time.sleep(0.5)
        yield running
    finally:
        stop_everything(running)
        left = _workspace_processes(home)
        assert not left, f"processes of the test workspace survived teardown: {left}"


# What Streamlit's browser client logs when it can no longer draw the app: it failed to apply a message from the
# server (seen as "Bad delta path index 3 (should be between [0, 0])" when a sidebar fragment tick crossed a page
# switch, benchmarks/monitor.md), closed its connection, and the page stays blank until a reload.
CLIENT_BREAKS = ("Bad delta path", "Cannot send rerun backMessage when disconnected", "Uncaught")


def watch_client(page) -> list[str]:
    """Collect the client's breakdowns (console errors above, a crashed tab) for the test to assert on."""
    breaks: list[str] = []
    page.on("console", lambda m: breaks.append(m.text.splitlines()[0][:200])
            if m.type == "error" and any(b in m.text for b in CLIENT_BREAKS) else None)
    page.on("crash", lambda _: breaks.append("the browser tab crashed"))
    return breaks


@pytest.fixture(scope="module")
def browser_page():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium chromium-driver)")
    from playwright.sync_api import sync_playwright
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=VIEWPORT)
            page = context.new_page()
            page.set_default_timeout(30_000)
            page.client_breaks = watch_client(page)
            yield page
            context.close()
        finally:
            browser.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def diagnostics(request, server, browser_page):
    """On failure: the page's text, a screenshot, and the tails of the server, worker and training logs."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is None or not report.failed:
        return
    page = browser_page
    print(f"\n===== page {page.url} =====")
    try:
        print(page.locator("[data-testid='stApp']").inner_text(timeout=5_000)[-6000:])
        page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
        print(f"(screenshot: {ARTIFACTS / 'failure.png'})")
    except Exception as err:  # noqa: BLE001 - diagnostics must not hide the real failure
        print(f"(could not read the page: {err})")
    print(f"===== server log ({server.log}) =====\n{server.log_tail()}")
    print(f"===== worker log =====\n{_tail(server.home / 'logs' / 'worker.log', 40)}")
    for train_log in sorted((server.home / "runs").glob("*/train.log")):
        print(f"===== {train_log} =====\n{_tail(train_log, 40)}")
