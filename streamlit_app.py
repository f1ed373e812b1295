"""Lightbox: the browser app. Declares the pages and draws the sidebar (workspace, device, queue).

With user accounts (classroom mode) a tab nobody has logged in to gets the login form in place of the page it asked
for, and the Instructor page is declared for instructors only; with none, the menu is as it always was."""
from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from engine import device, workspace
from engine.accounts.actor import Actor
from engine.runs import queue, store, worker
from pages import _auth as auth
from pages import _widgets as w
from pages._login import login_form

st.set_page_config(page_title="Lightbox", page_icon=":material/biotech:", layout="wide")

HERE = Path(__file__).parent
PAGES = (  # (file, title, icon)
    ("pages/home.py", "Home", ":material/home:"),
    ("pages/data.py", "Data", ":material/photo_library:"),
    ("pages/pretrain.py", "Pre-train", ":material/auto_fix_high:"),
    ("pages/train.py", "Train", ":material/model_training:"),
    ("pages/monitor.py", "Monitor", ":material/monitoring:"),
    ("pages/compare.py", "Compare", ":material/leaderboard:"),
    ("pages/search.py", "Search", ":material/tune:"),
    ("pages/predict.py", "Predict", ":material/image_search:"),
)
INSTRUCTOR_PAGE = ("pages/instructor.py", "Instructor", ":material/school:")
# The sidebar re-reads the queue this often (seconds) while runs are queued or training, and less often when
# nothing is: each tick costs the server ~15 ms of CPU per open tab (benchmarks/monitor.md).
QUEUE_SECONDS_BUSY = 5
QUEUE_SECONDS_IDLE = 30


def declared_pages(actor: Actor | None = None) -> list:
    """The menu. A page file that is missing is an installation error, said at once, not a page that vanishes.
    An instructor also gets the Instructor page."""
    missing = [path for path, _, _ in (*PAGES, INSTRUCTOR_PAGE) if not (HERE / path).is_file()]
    if missing:
        raise FileNotFoundError(f"Lightbox is incomplete: {', '.join(missing)} is missing next to {HERE.name}/"
                                "streamlit_app.py; restore it (e.g. `git checkout -- pages/`).")
    chosen = (*PAGES, INSTRUCTOR_PAGE) if actor is not None and actor.is_instructor else PAGES
    return [st.Page(path, title=title, icon=icon, default=(path == "pages/home.py")) for path, title, icon in chosen]


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


def queue_places(owner: str) -> list[str]:
    """'Your run NAME is number 3 in the queue.' for each queued run of one user (the engine's fair order)."""
    lines, places = [], None
    for run in reversed(store.list_runs(status=["queued"], owner=owner)):      # oldest first
        places = queue.queue_positions() if places is None else places        # one read of the queue per tick
        place = places.get(run["id"])
        if place is not None:
            lines.append(f"Your run {w.as_text(run.get('name') or run['id'])} is number {place} in the queue.")
    return lines


def queue_panel(actor: Actor | None = None) -> None:
    """Queue counts and workers. Reads only (the worker marks silent runs interrupted), so a tick is cheap."""
    with w.shows_errors("Reading the queue"):
        counts = store.run_counts()
        workers = worker.live_workers()
        left, right = st.columns(2)
        started = counts.get("running", 0) + counts.get("starting", 0)
        left.metric("Running", started, help="Training now, or starting (loading data and building the model).")
        right.metric("Queued", counts.get("queued", 0))
        st.caption(worker_line(workers, counts))
        if actor is not None and counts.get("queued"):
            for line in queue_places(actor.name):
                st.caption(line)


def account_panel(actor: Actor) -> None:
    st.caption(f"Logged in as **{w.as_text(actor.name)}** ({actor.role})")
    st.button("Log out", key="auth_logout", on_click=auth.log_out, icon=":material/logout:")


def sidebar(actor: Actor | None, locked: bool = False) -> None:
    with st.sidebar:
        auth.write_cookie()
        if locked:              # nobody logged in: nothing about the server or the queue, and no polling
            st.caption(w.DISCLAIMER)
            return
        if actor is not None:
            account_panel(actor)
        st.caption(f"Workspace: {w.as_text(workspace.home())}")      # a folder name is text, whatever it holds
        st.caption(f"Training device: **{device_name()}**")
        st.fragment(run_every=queue_seconds())(queue_panel)(actor)
        st.caption(w.DISCLAIMER)


accounts = auth.accounts_on()
user = auth.signed_in() if accounts else None
locked = accounts and user is None
navigation = st.navigation(declared_pages(user))
start_worker_once()
sidebar(user, locked)
if locked:
    login_form()
else:
    navigation.run()
