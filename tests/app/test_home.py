"""Home page and app shell: navigation, sidebar, and the three-click demo (dataset → run → Monitor)."""
from __future__ import annotations

import pytest

from engine.data import demo
from engine.data.dataset import list_datasets
from engine.errors import UserError
from engine.runs import store, worker


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
    sidebar = "\n".join(c.value for c in at.sidebar.caption)
    assert str(home) in sidebar
    assert "Training device: **" in sidebar
    assert "not a medical device" in sidebar
    assert [m.label for m in at.sidebar.metric] == ["Running", "Queued"]
    # Under tests no worker is started (LIGHTBOX_NO_AUTOWORKER=1).
    assert worker.live_workers() == []
    assert "Started a background" not in lb.texts(at.sidebar, "info")


def test_sidebar_says_when_it_started_a_worker(lb, monkeypatch):
    monkeypatch.delenv("LIGHTBOX_NO_AUTOWORKER")
    calls = []
    monkeypatch.setattr(worker, "ensure_worker", lambda: calls.append(1) or True)
    at = lb.app()
    lb.no_exception(at)
    assert calls
    assert "Started a background training worker" in lb.texts(at.sidebar, "info")


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
