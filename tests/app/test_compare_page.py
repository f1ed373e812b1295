"""Compare page: one dataset's runs ranked by one metric, filtered and exported; overlaid curves; confusion matrices."""
from __future__ import annotations

import json

from engine.runs import store, submit

COMPARE = "pages/compare.py"


def leaderboard(at):
    return next(d.value for d in at.dataframe if "Rank" in d.value.columns)


def settings_table(at):
    return next(d.value for d in at.dataframe if "Optimizer" in d.value.columns)


def test_no_runs_is_an_info_message(lb):
    at = lb.app(COMPARE)
    lb.no_exception(at)
    assert "No runs to compare yet" in lb.texts(at, "info")
    assert not at.dataframe


def test_leaderboard_ranks_runs_and_lists_their_settings(lb, cls_dataset):
    weak = lb.fake_run(cls_dataset, "classification", name="weak", value=0.6, lr=3e-4)
    strong = lb.fake_run(cls_dataset, "classification", name="strong", value=0.95)
    store.update_run(strong, test={"accuracy": 0.91, "n": 3})
    failed = lb.fake_run(cls_dataset, "classification", status="failed", value=0.5)
    at = lb.app(COMPARE)
    lb.no_exception(at)
    table = leaderboard(at)
    assert list(table["Run"]) == [strong, weak, failed] and list(table["Rank"]) == [1, 2, 3]
    row = table.set_index("Run").loc[strong]
    assert (row["Model"], row["Status"], row["Name"]) == ("resnet18", "done", "strong")
    assert (round(row["Validation Accuracy"], 2), row["Best epoch"]) == (0.95, 3)
    assert row["Test Accuracy"] == 0.91 and row["Training time (s)"] == 6.0
    setup = settings_table(at).set_index("Run")
    assert setup.loc[strong, "Epochs"] == "3/3"
    assert (setup.loc[strong, "Optimizer"], setup.loc[strong, "Schedule"], setup.loc[strong, "Loss"]) == (
        "adam", "constant", "ce")
    assert setup.loc[strong, "Augmentations"] == "hflip" and setup.loc[strong, "Pretrained"] == "from scratch"
    assert setup.loc[strong, "Parameters"] == 123_456 and setup.loc[weak, "Learning rate"] == 3e-4
    assert setup.loc[strong, "Picked by"] == "Accuracy"
    assert at.download_button(key="leaderboard_csv").label == "Download the leaderboard (CSV)"


def test_only_one_datasets_runs_are_ranked_by_one_named_metric(lb, cls_dataset, seg_dataset):
    """A Dice on one dataset is never ranked against an accuracy on another (issue 11, B5)."""
    cls = [lb.fake_run(cls_dataset, "classification", value=v) for v in (0.6, 0.9)]
    seg = lb.fake_run(seg_dataset, "segmentation", value=0.99)       # newest: its dataset is shown first
    at = lb.app(COMPARE)
    lb.no_exception(at)
    assert at.selectbox(key="compare_dataset").value == seg_dataset
    table = leaderboard(at)
    assert list(table["Run"]) == [seg] and "Validation Dice" in table.columns
    assert "Best value" not in table.columns and "Dataset" not in table.columns
    assert "ranked by validation Dice" in lb.texts(at, "caption")
    at.selectbox(key="compare_task").set_value("classification").run()
    lb.no_exception(at)
    assert at.selectbox(key="compare_dataset").value == cls_dataset
    table = leaderboard(at)
    assert list(table["Run"]) == cls[::-1] and "Validation Accuracy" in table.columns
    assert "Validation Dice" not in table.columns
    assert set(at.multiselect(key="compare_runs").value) <= set(cls)


def test_rank_by_another_metric_reorders_and_renames_the_column(lb, cls_dataset):
    first = lb.fake_run(cls_dataset, "classification", value=0.9)
    second = lb.fake_run(cls_dataset, "classification", value=0.7)
    store.update_run(first, best={"accuracy": 0.9, "balanced_accuracy": 0.5, "auc": 0.8})
    store.update_run(second, best={"accuracy": 0.7, "balanced_accuracy": 0.7, "auc": 0.8},
                     test={"balanced_accuracy": 0.66, "n": 3})
    at = lb.app(COMPARE)
    assert at.selectbox(key="compare_rank_metric").value == "accuracy"
    assert list(leaderboard(at)["Run"]) == [first, second]
    at.selectbox(key="compare_rank_metric").set_value("balanced_accuracy").run()
    lb.no_exception(at)
    table = leaderboard(at)
    assert list(table["Run"]) == [second, first]
    assert list(table["Validation Balanced accuracy"]) == [0.7, 0.5]
    assert table.loc[0, "Test Balanced accuracy"] == 0.66
    assert at.selectbox(key="compare_metric").value == "balanced_accuracy"     # the curves follow


def test_the_leaderboard_fits_the_page(lb, cls_dataset):
    """The ranking keeps few columns and stretches; the settings go to a second table (issue 11, B5)."""
    lb.fake_run(cls_dataset, "classification")
    at = lb.app(COMPARE)
    board = at.dataframe[0].value                      # the first table on the page is the ranking
    assert len(board.columns) <= 10, list(board.columns)
    assert {"Optimizer", "Learning rate", "Augmentations"} <= set(settings_table(at).columns)


def test_filters_by_task_dataset_and_status(lb, cls_dataset, seg_dataset):
    cls = lb.fake_run(cls_dataset, "classification")
    seg = lb.fake_run(seg_dataset, "segmentation")
    at = lb.app(COMPARE)
    at.selectbox(key="compare_task").set_value("segmentation").run()
    assert list(leaderboard(at)["Run"]) == [seg]
    at.selectbox(key="compare_task").set_value("classification").run()
    lb.no_exception(at)
    assert at.selectbox(key="compare_task").options == ["classification", "segmentation"]
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
    table = leaderboard(at)
    assert table["Validation Dice"].isna().all() and table["Rank"].isna().all()


def test_a_real_classification_run_draws_its_confusion_matrix(lb, cls_dataset):
    from engine.config import RunConfig
    from engine.runs import execute
    run_id = submit.create_run(RunConfig(dataset_id=cls_dataset, arch="lenet5", epochs=1, batch_size=4,
                                         image_size=32, device="cpu"), status="running")   # as a worker claims it
    assert execute.run_job(run_id)["status"] == "done"
    at = lb.app(COMPARE)
    lb.no_exception(at)
    assert leaderboard(at).loc[0, "Status"] == "done"
    assert len(lb.charts(at)) == 3
    heatmap = lb.charts(at)[2].proto.spec
    assert "abdomen" in heatmap and "chest" in heatmap


def test_cross_validation_shows_mean_sd_and_each_fold(lb, cls_dataset):
    for fold, value in ((1, 0.6), (2, 0.8), (3, 0.7)):
        lb.fake_run(cls_dataset, "classification", name=f"cv demo · fold {fold}/3", value=value,
                    study="cv:demo", trial=fold)
    lb.fake_run(cls_dataset, "classification", name="single split", value=0.9)
    at = lb.app(COMPARE)
    lb.no_exception(at)
    table = next(d.value for d in at.dataframe if "Per fold" in d.value.columns)
    (row,) = table.to_dict("records")
    assert row["Cross-validation"] == "cv demo" and row["Folds done"] == "3/3"
    assert abs(row["Mean Accuracy"] - 0.7) < 1e-9 and abs(row["SD"] - 0.1) < 1e-9
    assert row["Per fold"] == "0.600, 0.800, 0.700"


def test_the_leaderboard_shows_each_scores_interval_and_n(lb, cls_dataset):
    run_id = lb.fake_run(cls_dataset, "classification", value=0.75)
    best = store.get_run(run_id)["best"] | {"n": 12, "accuracy_ci": [0.47, 0.91]}
    store.update_run(run_id, best=best)
    at = lb.app(COMPARE)
    board = at.dataframe[0].value
    assert board.loc[0, "95 % interval (n)"] == "0.47–0.91 (n=12)"


def test_two_runs_within_chance_and_each_diagnosis_are_said(lb, cls_dataset):
    """0.80 vs 0.75 on 12 validation images cannot be told apart; a run stuck on one class is named."""
    a = lb.fake_run(cls_dataset, "classification", name="a", value=0.80)
    b = lb.fake_run(cls_dataset, "classification", name="b", value=0.75)
    for run_id in (a, b):
        store.update_run(run_id, best=store.get_run(run_id)["best"] | {"n": 12})
    stuck = store.get_run(b)["best"] | {"confusion": [[6, 0], [6, 0]], "balanced_accuracy": 0.5}
    store.update_run(b, best=stuck)
    at = lb.app(COMPARE)
    lb.no_exception(at)
    warnings = lb.texts(at, "warning")
    assert "cannot tell them apart" in warnings and "12 validation images" in warnings
    assert f"b ({b})" in warnings


def test_a_learning_curve_is_plotted_against_training_images_with_its_sentence(lb, seg_dataset):
    """Four runs tagged 'lc:<id>' (as engine.runs.learning_curve queues them): score vs training images."""
    from engine.runs import learning_curve
    curve_id = "lc:0a1b2c3d"
    for trial, (fraction, value) in enumerate([(0.1, 0.40), (0.25, 0.55), (0.5, 0.66), (1.0, 0.80)], start=1):
        run_id = lb.fake_run(seg_dataset, "segmentation", name=f"curve · {fraction:.0%} of training", value=value)
        run = store.get_run(run_id)
        store.update_run(run_id, study=curve_id, trial=trial, best=run["best"] | {"n": 400},
                         config=json.dumps(run["config"] | {"train_fraction": fraction}))
    expected = learning_curve.summary(curve_id)
    at = lb.app(COMPARE)
    lb.no_exception(at)
    assert "Learning curve" in [h.value for h in at.subheader]
    chart = next(c for c in lb.charts(at) if "Training images" in c.proto.spec)
    trace = json.loads(chart.proto.spec)["data"][0]
    assert trace["x"] == [p["train_images"] for p in expected["points"]] and trace["x"] == sorted(trace["x"])
    assert [round(y, 2) for y in trace["y"]] == [0.40, 0.55, 0.66, 0.80]
    assert "still rising" in expected["verdict"] and expected["verdict"] in lb.texts(at, "info")


def test_a_run_started_from_another_says_what_it_kept(lb, seg_dataset):
    from engine.runs.paths import run_dir
    source = lb.fake_run(seg_dataset, "segmentation")
    started = lb.fake_run(seg_dataset, "segmentation")
    run = store.get_run(started)
    store.update_run(started, config=json.dumps(run["config"] | {"pretrained": f"run:{source}"}))
    kept = f"Kept 90 of 92 tensors from run {source} (U-Net, 2 classes); rebuilt the output layer for 3 classes."
    run_dir(started).mkdir(parents=True, exist_ok=True)
    (run_dir(started) / "weights.json").write_text(json.dumps({"message": kept}))
    at = lb.app(COMPARE)
    lb.no_exception(at)
    setup = settings_table(at).set_index("Run")
    assert setup.loc[started, "Pretrained"] == f"run {source}" and setup.loc[started, "Weights kept"] == kept
    assert setup.loc[source, "Weights kept"] == ""
