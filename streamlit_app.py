"""Lightbox: the browser app. Declares the pages and draws the sidebar (workspace, device, queue)."""
from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from engine import device, workspace
from engine.runs import queue, store, worker
from pages import _widgets as w

st.set_page_config(page_title="Lightbox", page_icon=":material/biotech:", layout="wide")

HERE = Path(__file__).parent
PAGES = (  # (file, title, icon); pages written elsewhere join the menu as soon as their file exists
    ("pages/home.py", "Home", ":material/home:"),
    ("pages/data.py", "Data", ":material/photo_library:"),
    ("pages/train.py", "Train", ":material/model_training:"),
    ("pages/monitor.py", "Monitor", ":material/monitoring:"),
    ("pages/compare.py", "Compare", ":material/leaderboard:"),
    ("pages/search.py", "Search", ":material/tune:"),
    ("pages/predict.py", "Predict", ":material/image_search:"),
)


@st.cache_resource(show_spinner=False)
def device_name() -> str:
    """The accelerator the worker will use; asked once per server (it imports torch)."""
    return device.device_name()


def start_worker_once() -> None:
    """Make sure queued runs get trained: start a background worker when none is alive (not under tests)."""
    if os.environ.get("LIGHTBOX_NO_AUTOWORKER") == "1":
        return
    try:
        if worker.ensure_worker():
            st.session_state["worker_started"] = True
    except Exception:  # noqa: BLE001 - the app still works without a worker; the sidebar says so
        w.log.exception("could not start a worker")
        st.session_state["worker_error"] = True


@st.fragment(run_every=5)
def queue_panel() -> None:
    """Queue counts and workers, refreshed every few seconds without rerunning the page."""
    with w.shows_errors("Reading the queue"):
        queue.mark_stale_runs()
        counts = store.run_counts()
        workers = [x for x in worker.live_workers() if x.get("device") != "starting"]
        left, right = st.columns(2)
        left.metric("Running", counts.get("running", 0))
        right.metric("Queued", counts.get("queued", 0))
        if workers:
            st.caption(f"{len(workers)} worker(s) live · " + ", ".join(f"{x['device']}" for x in workers))
        elif counts.get("queued") or counts.get("running"):
            st.caption("No worker is running, so queued runs wait. Start one with `python -m engine worker`.")
        else:
            st.caption("No worker running yet; one starts when the app needs it.")


def sidebar() -> None:
    with st.sidebar:
        st.caption(f"Workspace: `{workspace.home()}`")
        st.caption(f"Training device: **{device_name()}**")
        if st.session_state.get("worker_started"):
            st.info("Started a background training worker for the queue.", icon=":material/play_circle:")
        if st.session_state.get("worker_error"):
            st.warning("Could not start a training worker; run `python -m engine worker` in a terminal.")
        queue_panel()
        st.caption(w.DISCLAIMER)


pages = [st.Page(path, title=title, icon=icon, default=(path == "pages/home.py"))
         for path, title, icon in PAGES if (HERE / path).exists()]
navigation = st.navigation(pages)
start_worker_once()
sidebar()
navigation.run()
