"""Monitor page: run selection (session, ?run=), status and messages, progress, curves, previews, Stop/Resume."""
from __future__ import annotations

import json

import numpy as np
import plotly.graph_objects as go
import pytest
from PIL import Image

from engine.config import RunConfig
from engine.runs import execute, queue, store, submit
from engine.runs.paths import run_dir
from pages import _widgets as w

MONITOR = "pages/monitor.py"


def monitor(lb, run_id: str | None = None):
    """The Monitor page on its own, opened as a link with ?run=ID would open it."""
    at = lb.page("monitor.py")
    if run_id:
        at.query_params["run"] = run_id
    return at.run()


def progress_text(at) -> str:
    return at.get("progress")[0].proto.text


def test_no_runs_yet(lb):
    at = monitor(lb)
    lb.no_exception(at)
    assert "No runs yet" in lb.texts(at, "info")


def test_finished_run_shows_results_curves_and_no_polling(lb, cls_dataset):
    run_id = lb.fake_run(cls_dataset, "classification", name="first try", value=0.9)
    at = monitor(lb, run_id)
    lb.no_exception(at)
    assert at.selectbox(key="monitor_run").value == run_id
    assert "first try" in lb.texts(at, "markdown")
    assert "Finished." in lb.texts(at, "success")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Best validation Accuracy"] == "0.900"
    assert metrics["Best epoch"] == "3" and metrics["Parameters"] == "0.12 M"
    assert progress_text(at) == "Epoch 3/3"
    assert len(lb.charts(at)) == 2
    assert at.button(key="monitor_stop").disabled and at.button(key="monitor_resume").disabled
    assert "Sample predictions appear after the first epoch" in lb.texts(at, "caption")


def test_selection_comes_from_the_session_and_changes_the_address(lb, seg_dataset):
    older = lb.fake_run(seg_dataset, "segmentation", name="older")
    newer = lb.fake_run(seg_dataset, "segmentation", name="newer")
    at = lb.page("monitor.py")
    at.session_state["run_id"] = older
    at.run()
    assert at.selectbox(key="monitor_run").value == older
    assert at.selectbox(key="monitor_run").options[0].startswith("newer")     # newest first
    at.selectbox(key="monitor_run").set_value(newer).run()
    lb.no_exception(at)
    assert at.query_params["run"] == newer and at.session_state["run_id"] == newer
    assert "newer" in lb.texts(at, "markdown")


def test_running_run_has_eta_and_stop_requests_a_cancel(lb, seg_dataset):
    run_id = lb.fake_run(seg_dataset, "segmentation", status="running", epochs=5)
    at = monitor(lb, run_id)
    lb.no_exception(at)
    text = progress_text(at)
    assert text.startswith("Epoch 4/5") and "about 2 s left" in text
    assert at.button(key="monitor_resume").disabled
    at.button(key="monitor_stop").click().run()
    lb.no_exception(at)
    assert store.get_run(run_id)["cancel_requested"]
    assert "Stopping at the next training step" in lb.texts(at, "info")
    assert at.button(key="monitor_stop").disabled
    assert "stopping…" in progress_text(at)


def test_an_auto_run_that_re_planned_says_why_its_epochs_changed(lb, seg_dataset):
    run_id = lb.fake_run(seg_dataset, "segmentation", status="running", epochs=5)
    plain = monitor(lb, run_id)
    assert "re-planned" not in lb.texts(plain, "caption")                        # not an Auto run: nothing said
    config = store.get_run(run_id)["config"]
    config["preset"] = {"name": "auto", "budget_minutes": 5, "values": {"epochs": 5}, "reasons": {}, "probe": {}}
    store.update_run(run_id, config=json.dumps(config))
    store.replan_epochs(run_id, 9, {"after_epoch": 2, "epoch_seconds": 6.0, "from_epochs": 5, "to_epochs": 9,
                                    "times": 1})
    store.replan_epochs(run_id, 12, {"after_epoch": 4, "epoch_seconds": 4.04, "from_epochs": 9, "to_epochs": 12,
                                     "times": 2})
    at = monitor(lb, run_id)
    lb.no_exception(at)
    assert progress_text(at).startswith("Epoch 4/12")
    assert ("Auto re-planned this run's length 2 times to fit its 5-minute budget: its timing probe planned 5 "
            "epochs; after epoch 4 an epoch took about 4.0 s, so it trains 12. The learning-rate schedule follows "
            "the new end.") in lb.texts(at, "caption")


def test_stop_cancels_a_queued_run_at_once(lb, seg_dataset):
    run_id = lb.fake_run(seg_dataset, "segmentation", status="queued")
    at = monitor(lb, run_id)
    assert "Waiting for a worker" in lb.texts(at, "warning")
    at.button(key="monitor_stop").click().run()
    lb.no_exception(at)
    assert store.get_run(run_id)["status"] == "cancelled"
    assert "Cancelled before it started" in lb.texts(at, "info")


def test_a_fold_waiting_for_train_folds_says_so_not_that_a_worker_is_missing(lb, seg_dataset):
    from engine.runs.crossval import WAITING
    run_id = lb.fake_run(seg_dataset, "segmentation", status="queued")
    store.update_run(run_id, message=WAITING)
    at = monitor(lb, run_id)
    lb.no_exception(at)
    assert "train --folds" in lb.texts(at, "info") and "Waiting for a worker" not in lb.texts(at, "warning")


def test_a_run_started_from_another_says_what_it_kept(lb, seg_dataset):
    import json as _json
    run_id = lb.fake_run(seg_dataset, "segmentation")
    config = {**store.get_run(run_id)["config"], "pretrained": "run:1130-000000-abcd"}
    store.update_run(run_id, config=_json.dumps(config))
    note = "Kept 90 of 92 tensors from run 1130-000000-abcd (U-Net, 2 classes); rebuilt the output layer for 3 classes."
    run_dir(run_id).mkdir(parents=True, exist_ok=True)
    (run_dir(run_id) / "weights.json").write_text(_json.dumps({"message": note}))
    at = monitor(lb, run_id)
    lb.no_exception(at)
    assert "Kept 90 of 92 tensors from run 1130-000000-abcd" in lb.texts(at, "caption")


def test_failed_run_shows_its_reason_and_resume_queues_it(lb, cls_dataset):
    run_id = lb.fake_run(cls_dataset, "classification", status="failed")
    store.set_status(run_id, "failed", "The loss became NaN; lower the learning rate.")
    at = monitor(lb, run_id)
    lb.no_exception(at)
    assert "The run failed: The loss became NaN; lower the learning rate." in lb.texts(at, "error")
    at.button(key="monitor_resume").click().run()
    lb.no_exception(at)
    assert store.get_run(run_id)["status"] == "queued"
    assert "Queued again" in lb.texts(at, "success")


def test_interrupted_run_message_is_a_warning(lb, seg_dataset):
    run_id = lb.fake_run(seg_dataset, "segmentation", status="interrupted")
    store.set_status(run_id, "interrupted", "The training process stopped unexpectedly; press Resume to continue.")
    at = monitor(lb, run_id)
    assert "stopped unexpectedly" in lb.texts(at, "warning")
    assert not at.button(key="monitor_resume").disabled


def test_unknown_run_id_is_explained(lb, seg_dataset):
    real = lb.fake_run(seg_dataset, "segmentation")
    at = monitor(lb, "0101-000000-dead")
    lb.no_exception(at)
    assert "There is no run '0101-000000-dead'" in lb.texts(at, "error")
    assert at.selectbox(key="monitor_run").value == real


def test_latest_sample_prediction_is_shown(lb, seg_dataset):
    run_id = lb.fake_run(seg_dataset, "segmentation")
    samples = run_dir(run_id) / "samples"
    samples.mkdir(parents=True)
    for epoch in (1, 2):
        Image.fromarray(np.zeros((8, 24, 3), dtype=np.uint8)).save(samples / f"epoch_{epoch:03d}.png")
    at = monitor(lb, run_id)
    lb.no_exception(at)
    assert "after epoch 2 (each row: image · true mask · predicted mask)" in at.image[0].proto.imgs[0].caption


def test_a_real_tiny_training_run(lb, seg_dataset):
    """One real 2-epoch run through the queue's executor: the page draws what the trainer actually logs."""
    run_id = submit.submit(RunConfig(dataset_id=seg_dataset, arch="fcn_simple", epochs=2, batch_size=4,
                                   image_size=32, device="cpu"))
    assert queue.claim_next_job("test-worker").run_id == run_id      # as a worker does: queued → starting
    execute.run_job(run_id)
    at = lb.app()
    at.session_state["run_id"] = run_id
    at.switch_page(MONITOR).run()
    lb.no_exception(at)
    assert at.title[0].value == "Monitor"
    assert progress_text(at) == "Epoch 2/2"
    assert len(lb.charts(at)) == 2
    assert "after epoch 2" in at.image[0].proto.imgs[0].caption
    assert "Held-out test split" in lb.texts(at, "caption")


def test_delete_needs_a_confirmation_and_then_shows_another_run(lb, seg_dataset):
    kept = lb.fake_run(seg_dataset, "segmentation", name="keep me")
    doomed = lb.fake_run(seg_dataset, "segmentation", name="delete me")
    run_dir(doomed).mkdir(parents=True, exist_ok=True)
    (run_dir(doomed) / "best.pt").write_bytes(b"weights")
    at = monitor(lb, doomed)
    assert at.button(key="monitor_delete").disabled
    at.checkbox(key=f"monitor_delete_sure_{doomed}").check().run()
    at.button(key="monitor_delete").click().run()
    lb.no_exception(at)
    assert store.get_run(doomed) is None and not run_dir(doomed).exists()
    assert f"Deleted run {doomed}" in lb.texts(at, "success")
    assert at.selectbox(key="monitor_run").value == kept and at.query_params["run"] == kept
    assert "There is no run" not in lb.texts(at, "error")


def test_active_runs_cannot_be_deleted(lb, seg_dataset):
    run_id = lb.fake_run(seg_dataset, "segmentation", status="running")
    at = monitor(lb, run_id)
    assert "Stop the run before deleting it." in lb.texts(at, "caption")
    assert "monitor_delete" not in [b.key for b in at.button]


@pytest.mark.parametrize("task", ["segmentation", "classification"])
def test_live_figures_pass_plotly_validation(lb, seg_dataset, cls_dataset, task):
    """The live panel builds its figures without plotly's property checks (they cost most of a refresh): the
    same figures must pass them."""
    run_id = lb.fake_run(seg_dataset if task == "segmentation" else cls_dataset, task, status="running")
    columns = w.curve_columns(store.get_metrics(run_id))
    for figure in (w.loss_figure(columns), w.metric_figure(columns, task)):
        assert len(figure.data) >= 2
        go.Figure(figure.to_dict())         # raises ValueError on an unknown or ill-typed property


def test_a_finished_run_shows_its_interval_n_and_diagnosis(lb, seg_dataset):
    """A model that finds nothing: Dice 0 with pixel accuracy 0.98 — the accuracy paradox, said in words."""
    from engine.runs import store
    run_id = lb.fake_run(seg_dataset, "segmentation", value=0.01)
    store.update_run(run_id, best=store.get_run(run_id)["best"] | {"dice": 0.0, "pixel_accuracy": 0.98, "n": 12,
                                                                   "dice_n": 9, "dice_ci": [0.0, 0.05],
                                                                   "empty_correct": 3, "empty_total": 3})
    store.log_metrics(run_id, [(3, 12, "val", "pixel_accuracy", 0.98), (3, 12, "val", "dice", 0.0)])
    at = lb.app("pages/monitor.py")
    lb.no_exception(at)
    assert "95 % interval 0.00–0.05 · 9 images · 3/3 empty slices left empty" in lb.texts(at, "caption")
    assert "What Lightbox notices" in lb.texts(at, "markdown")
    assert "pixel accuracy" in lb.texts(at, "warning").lower()
    assert "accuracy paradox" in lb.texts(at, "caption")               # in "More metrics", with why it misleads
    chart = next(c for c in lb.charts(at) if "Scores" in str(c.proto.spec))
    assert "Pixel accuracy" not in str(chart.proto.spec)               # not among the headline curves


def test_moments_are_written_in_utc_and_say_so(monkeypatch):
    """Created times and deadlines read the same on every page, whatever the server's clock zone."""
    import time as _time
    monkeypatch.setenv("TZ", "America/New_York")
    _time.tzset()
    try:
        assert w.when(0) == "–" and w.when(None) == "–"
        assert w.when(1_764_489_600) == "2025-11-30 08:00 UTC"
        assert w.when_iso("2025-11-30T08:00:00Z") == "2025-11-30 08:00 UTC"
        assert w.when_iso("not a date <b>") == w.as_text("not a date <b>") and w.when_iso(None) == "–"
    finally:
        monkeypatch.delenv("TZ")
        _time.tzset()
