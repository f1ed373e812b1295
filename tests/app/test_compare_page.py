"""Compare page: leaderboard (ranked, filtered, exported), overlaid curves and confusion matrices."""
from __future__ import annotations

import json

from engine.runs import store, submit

COMPARE = "pages/compare.py"


def leaderboard(at):
    return next(d.value for d in at.dataframe if "Run" in d.value.columns)


def test_no_runs_is_an_info_message(lb):
    at = lb.app(COMPARE)
    lb.no_exception(at)
    assert "No runs to compare yet" in lb.texts(at, "info")
    assert not at.dataframe


def test_leaderboard_ranks_runs_and_lists_their_settings(lb, cls_dataset, seg_dataset):
    weak = lb.fake_run(cls_dataset, "classification", name="weak", value=0.6, lr=3e-4)
    strong = lb.fake_run(cls_dataset, "classification", name="strong", value=0.95)
    store.update_run(strong, test={"accuracy": 0.91, "n": 3})
    seg = lb.fake_run(seg_dataset, "segmentation", status="failed", value=0.5)
    at = lb.app(COMPARE)
    lb.no_exception(at)
    table = leaderboard(at)
    assert list(table["Run"])[:2] == [strong, weak]
    assert set(table["Run"]) == {strong, weak, seg}
    row = table.set_index("Run").loc[strong]
    assert (row["Model"], row["Dataset"], row["Status"]) == ("resnet18", cls_dataset, "done")
    assert (row["Best metric"], round(row["Best value"], 2), row["Best epoch"]) == ("Accuracy", 0.95, 3)
    assert row["Test value"] == 0.91 and row["Epochs"] == "3/3" and row["Parameters"] == 123_456
    assert (row["Optimizer"], row["Schedule"], row["Loss"], row["Augmentations"]) == ("adam", "constant", "ce", "hflip")
    assert row["Pretrained"] == "from scratch" and row["Training time (s)"] == 6.0
    assert table.set_index("Run").loc[weak, "Learning rate"] == 3e-4
    assert at.download_button(key="leaderboard_csv").label == "Download the leaderboard (CSV)"


def test_filters_by_task_and_dataset(lb, cls_dataset, seg_dataset):
    cls = lb.fake_run(cls_dataset, "classification")
    seg = lb.fake_run(seg_dataset, "segmentation")
    at = lb.app(COMPARE)
    at.selectbox(key="compare_task").set_value("segmentation").run()
    assert list(leaderboard(at)["Run"]) == [seg]
    at.selectbox(key="compare_task").set_value("all").run()
    at.multiselect(key="compare_datasets").set_value([cls_dataset]).run()
    lb.no_exception(at)
    assert list(leaderboard(at)["Run"]) == [cls]
    at.multiselect(key="compare_status").set_value(["failed"]).run()
    assert "No run matches these filters" in lb.texts(at, "info")


def test_overlaid_curves_and_confusion_matrices(lb, cls_dataset):
    runs = [lb.fake_run(cls_dataset, "classification", name=f"run {i}", value=0.5 + i / 10) for i in range(2)]
    at = lb.app(COMPARE)
    lb.no_exception(at)
    assert set(at.multiselect(key="compare_runs").value) == set(runs)
    charts = lb.charts(at)
    assert len(charts) == 2 + 2                # metric + loss, and one confusion matrix per run
    assert at.selectbox(key="compare_metric").value == "accuracy"
    assert "Confusion matrices at the best epoch" in [s.value for s in at.subheader]
    axes = [json.loads(c.proto.spec)["layout"]["yaxis"] for c in charts[:2]]
    assert axes[0]["range"] == [-0.02, 1.02] and "range" not in axes[1]    # scores on [0, 1]; loss free
    at.selectbox(key="compare_metric").set_value("auc").run()
    lb.no_exception(at)
    at.multiselect(key="compare_runs").set_value([runs[0]]).run()
    assert len(lb.charts(at)) == 3


def test_curves_start_from_runs_on_the_newest_runs_dataset(lb, cls_dataset, seg_dataset):
    older = lb.fake_run(cls_dataset, "classification", name="classifier")
    seg = [lb.fake_run(seg_dataset, "segmentation", name=f"seg {i}") for i in range(2)]
    at = lb.app(COMPARE)
    lb.no_exception(at)
    assert set(at.multiselect(key="compare_runs").value) == set(seg) and older not in at.multiselect(
        key="compare_runs").value
    assert at.selectbox(key="compare_metric").value == "dice"


def test_runs_without_epochs_yet_say_so(lb, seg_dataset):
    run_id = store.insert_run({"dataset_id": seg_dataset, "arch": "unet", "task": "segmentation", "epochs": 5})
    at = lb.app(COMPARE)
    at.multiselect(key="compare_runs").set_value([run_id]).run()
    lb.no_exception(at)
    assert "not logged a validation epoch yet" in lb.texts(at, "caption")
    assert leaderboard(at)["Best value"].isna().all()


def test_a_real_classification_run_draws_its_confusion_matrix(lb, cls_dataset):
    from engine.config import RunConfig
    from engine.runs import execute
    run_id = submit.submit(RunConfig(dataset_id=cls_dataset, arch="lenet5", epochs=1, batch_size=4, image_size=32,
                                   device="cpu"))
    execute.run_job(run_id)
    at = lb.app(COMPARE)
    lb.no_exception(at)
    assert leaderboard(at).loc[0, "Status"] == "done"
    assert len(lb.charts(at)) == 3
    heatmap = lb.charts(at)[2].proto.spec
    assert "abdomen" in heatmap and "chest" in heatmap
