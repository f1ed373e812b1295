"""Home page and app shell: navigation, sidebar, and the three-click demo (dataset → run → Monitor)."""
from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import event
from streamlit.testing.v1 import AppTest

from engine.data import demo
from engine.data.dataset import list_datasets
from engine.errors import UserError
from engine.runs import store, worker

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def small_demos(monkeypatch):
    """The built-in demos at 16 images, so generating one takes a fraction of a second."""
    for kind in demo.DEMOS:
        monkeypatch.setitem(demo.DEMOS[kind], "n", 16)


def test_home_explains_and_sidebar_shows_workspace_device_and_queue(lb, home):
    at = lb.app()
    lb.no_exception(at)
    assert at.title[0].value == "Lightbox"
    assert [b.label for b in at.button][:2] == ["Use the cardiac MRI demo", "Use the chest vs abdomen X-ray demo"]
    sidebar = lb.rendered("\n".join(c.value for c in at.sidebar.caption))     # the folder is escaped text
    assert str(home) in sidebar
    assert "Training device: **" in sidebar
    assert "not a medical device" in sidebar
    assert [m.label for m in at.sidebar.metric] == ["Running", "Queued"]
    # Under tests no worker is started (LIGHTBOX_NO_AUTOWORKER=1), and the sidebar says how to start one.
    assert worker.live_workers() == []
    assert "No worker running; start one with `python -m engine worker`." in sidebar


def test_sidebar_says_one_thing_about_the_worker_it_started(lb, monkeypatch):
    """It used to show "Started a background training worker" and "No worker running yet" at the same time."""
    monkeypatch.delenv("LIGHTBOX_NO_AUTOWORKER")
    launched = []
    monkeypatch.setattr(worker.subprocess, "Popen", lambda *a, **k: launched.append(a))     # no real process
    at = lb.app()
    lb.no_exception(at)
    assert len(launched) == 1
    sidebar = lb.texts(at.sidebar, "caption") + lb.texts(at.sidebar, "info")
    assert "Starting a background training worker" in sidebar
    assert "No worker" not in sidebar and "worker(s) live" not in sidebar
    at = lb.app()                              # another tab a moment later: no second worker
    assert len(launched) == 1
    assert "Starting a background training worker" in lb.texts(at.sidebar, "caption")
    worker._register_worker("host:123", slots=1, device="CPU")      # the worker itself checks in
    at = lb.app()       # a new session each time: AppTest shows the sidebar of an app's first run only
    sidebar = lb.texts(at.sidebar, "caption") + lb.texts(at.sidebar, "info")
    assert "1 worker(s) live · CPU" in sidebar
    assert "Starting" not in sidebar and "Started" not in sidebar and "No worker" not in sidebar


def test_sidebar_counts_starting_runs_as_running(lb, seg_dataset):
    lb.fake_run(seg_dataset, "segmentation", status="starting")
    lb.fake_run(seg_dataset, "segmentation", status="running")
    lb.fake_run(seg_dataset, "segmentation", status="queued")
    at = lb.app()
    lb.no_exception(at)
    assert {m.label: m.value for m in at.sidebar.metric} == {"Running": "2", "Queued": "1"}


def test_sidebar_only_reads_the_store(lb, seg_dataset, monkeypatch):
    """The queue panel reruns every few seconds in every open tab: it must not sweep stale runs (a write; the
    worker does that) nor write anything else."""
    monkeypatch.setenv("LIGHTBOX_STALE_SECONDS", "30")
    silent = lb.fake_run(seg_dataset, "segmentation", status="running")
    store.update_run(silent, heartbeat_at=store.now() - 600)     # stale: queue.mark_stale_runs() would write
    writes = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if not statement.lstrip().upper().startswith(("SELECT", "PRAGMA")):
            writes.append(statement)
    event.listen(store.db(), "before_cursor_execute", record)
    try:
        at = lb.app()
    finally:
        event.remove(store.db(), "before_cursor_execute", record)
    lb.no_exception(at)
    assert writes == []
    assert store.get_run(silent)["status"] == "running"


def test_a_missing_page_file_is_an_error_not_a_shorter_menu(lb, tmp_path):
    app_dir = tmp_path / "app"
    (app_dir / "pages").mkdir(parents=True)
    (app_dir / "streamlit_app.py").write_text((ROOT / "streamlit_app.py").read_text())
    for page in (ROOT / "pages").glob("*.py"):
        if page.name != "compare.py":
            (app_dir / "pages" / page.name).write_text(page.read_text())
    at = AppTest.from_file(str(app_dir / "streamlit_app.py"), default_timeout=60).run()
    assert at.exception, "the app started without its Compare page and said nothing"
    assert "pages/compare.py is missing" in at.exception[0].value


def test_three_clicks_from_demo_to_a_queued_unet_on_monitor(lb, small_demos):
    at = lb.app()
    at.button(key="demo_segmentation").click().run()
    lb.no_exception(at)
    (dataset,) = list_datasets()
    assert dataset["task"] == "segmentation"
    assert dataset["id"] in lb.texts(at, "success")
    start = at.button(key="demo_train")
    assert start.label == "Train a U-Net with defaults"
    start.click().run()
    lb.no_exception(at)
    assert at.title[0].value == "Monitor"
    (run,) = store.list_runs()
    assert (run["status"], run["arch"], run["dataset_id"]) == ("queued", "unet", dataset["id"])
    assert run["config"]["augment"] == ["hflip", "rotate"]
    assert at.session_state["run_id"] == run["id"]
    assert at.query_params["run"] == run["id"]


def test_classification_demo_trains_a_resnet(lb, small_demos):
    at = lb.app()
    at.button(key="demo_classification").click().run()
    at.button(key="demo_train").click().run()
    lb.no_exception(at)
    (run,) = store.list_runs()
    assert (run["arch"], run["task"]) == ("resnet18", "classification")


def test_demo_failure_is_a_sentence_not_a_traceback(lb, monkeypatch):
    def broken(kind):
        raise UserError("The disk is full; free some space and try again.")
    monkeypatch.setattr(demo, "ensure_demo_dataset", broken)
    at = lb.app()
    at.button(key="demo_segmentation").click().run()
    lb.no_exception(at)
    assert "The disk is full" in lb.texts(at, "error")
    assert "demo_train" not in [b.key for b in at.button]
