"""Lightbox: the browser app. Declares the pages and draws the sidebar (workspace, device, queue)."""
from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from engine import device, workspace
from engine.runs import store, worker
from pages import _widgets as w

st.set_page_config(page_title="Lightbox", page_icon=":material/biotech:", layout="wide")

HERE = Path(__file__).parent
PAGES = (  # (file, title, icon)
    ("pages/home.py", "Home", ":material/home:"),
    ("pages/data.py", "Data", ":material/photo_library:"),
    ("pages/train.py", "Train", ":material/model_training:"),
    ("pages/monitor.py", "Monitor", ":material/monitoring:"),
    ("pages/compare.py", "Compare", ":material/leaderboard:"),
    ("pages/search.py", "Search", ":material/tune:"),
    ("pages/predict.py", "Predict", ":material/image_search:"),
)
# The sidebar re-reads the queue this often (seconds) while runs are queued or training, and less often when
# nothing is: each tick costs the server ~15 ms of CPU per open tab (benchmarks/monitor.md).
QUEUE_SECONDS_BUSY = 5
QUEUE_SECONDS_IDLE = 30


def declared_pages() -> list:
    """The menu. A page file that is missing is an installation error, said at once, not a page that vanishes."""
    missing = [path for path, _, _ in PAGES if not (HERE / path).is_file()]
    if missing:
        raise FileNotFoundError(f"Lightbox is incomplete: {', '.join(missing)} is missing next to {HERE.name}/"
                                "streamlit_app.py; restore it (e.g. `git checkout -- pages/`).")
    return [st.Page(path, title=title, icon=icon, default=(path == "pages/home.py")) for path, title, icon in PAGES]


@st.cache_resource(show_spinner=False)
def device_name() -> str:
    """The accelerator the worker will use; asked once per server (it imports torch)."""
    return device.device_name()


def autoworker() -> bool:
    return os.environ.get("LIGHTBOX_NO_AUTOWORKER") != "1"


def start_worker_once() -> None:
    """Make sure queued runs get trained: start a background worker when none is alive (not under tests)."""
    if not autoworker():
        return
    try:
        worker.ensure_worker()
        st.session_state.pop("worker_error", None)
    except Exception:  # noqa: BLE001 - the app still works without a worker; the sidebar says so
        w.log.exception("could not start a worker")
        st.session_state["worker_error"] = True


def worker_line(workers: list[dict], counts: dict[str, int]) -> str:
    """One sentence on who trains the queue, from the workers table only (so every tab says the same)."""
    live = [x for x in workers if x.get("device") != "starting"]
    if live:
        return f"{len(live)} worker(s) live · " + w.as_text(", ".join(str(x["device"]) for x in live))
    if workers:     # the app registered the worker it just launched; it is still importing torch
        return "Starting a background training worker…"
    if st.session_state.get("worker_error"):
        return "Could not start a training worker; run `python -m engine worker` in a terminal."
    waiting = " Queued runs wait until one runs." if counts.get("queued") else ""
    if autoworker():
        return "No worker running; the app starts one on your next click." + waiting
    return "No worker running; start one with `python -m engine worker`." + waiting


def queue_seconds() -> float:
    """Refresh often while something is queued or training, rarely when nothing is (decided on each full rerun)."""
    try:
        counts = store.run_counts()
    except Exception:  # noqa: BLE001 - the panel itself reports a broken store
        return QUEUE_SECONDS_BUSY
    return QUEUE_SECONDS_BUSY if any(counts.get(status) for status in store.ACTIVE) else QUEUE_SECONDS_IDLE


def queue_panel() -> None:
    """Queue counts and workers. Reads only (the worker marks silent runs interrupted), so a tick is cheap."""
    with w.shows_errors("Reading the queue"):
        counts = store.run_counts()
        workers = worker.live_workers()
        left, right = st.columns(2)
        started = counts.get("running", 0) + counts.get("starting", 0)
        left.metric("Running", started, help="Training now, or starting (loading data and building the model).")
        right.metric("Queued", counts.get("queued", 0))
        st.caption(worker_line(workers, counts))


def sidebar() -> None:
    with st.sidebar:
        st.caption(f"Workspace: {w.as_text(workspace.home())}")      # a folder name is text, whatever it holds
        st.caption(f"Training device: **{device_name()}**")
        st.fragment(run_every=queue_seconds())(queue_panel)()
        st.caption(w.DISCLAIMER)


navigation = st.navigation(declared_pages())
start_worker_once()
sidebar()
navigation.run()
