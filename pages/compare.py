"""Compare: a leaderboard of runs, their curves overlaid, confusion matrices side by side, and a CSV export."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.data.dataset import load_manifest
from engine.errors import UserError
from engine.runs import store
from engine.tasks import LOWER_IS_BETTER
from pages import _widgets as w


def leaderboard(runs: list[dict]) -> pd.DataFrame:
    """One row per run: what it was, how it was set up, and how well it did (numbers stay numbers for sorting)."""
    rows = []
    for run in runs:
        config, test = run.get("config") or {}, run.get("test") or {}
        metric = run.get("best_metric") or ""
        rows.append({
            "Run": run["id"], "Name": run.get("name") or "", "Model": run["arch"], "Dataset": run["dataset_id"],
            "Task": run["task"], "Status": run["status"],
            "Best metric": w.METRIC_TITLES.get(metric, metric), "Best value": run.get("best_value"),
            "Best epoch": run.get("best_epoch"), "Test value": test.get(metric),
            "Epochs": f"{run.get('epoch') or 0}/{run.get('epochs') or 0}",
            "Training time (s)": round(run.get("train_seconds") or 0.0, 1), "Parameters": run.get("params"),
            "Learning rate": config.get("lr"), "Batch size": config.get("batch_size"),
            "Optimizer": config.get("optimizer"), "Schedule": config.get("schedule"), "Loss": config.get("loss"),
            "Augmentations": ", ".join(config.get("augment") or []) or "none",
            "Pretrained": _weights(config), "Image size": config.get("image_size"),
            "Study": run.get("study") or "", "Created": w.when(run.get("created_at")),
        })
    return pd.DataFrame(rows)


def _weights(config: dict) -> str:
    start = config.get("pretrained") or "none"
    label = {"none": "from scratch", "imagenet": "ImageNet"}.get(start, "own file")
    return f"{label}, frozen backbone" if config.get("freeze_backbone") else label


def ranked(runs: list[dict]) -> list[dict]:
    """Best first; runs with no score yet at the end, newest first among them."""
    def key(run: dict):
        value = run.get("best_value")
        if value is None:
            return (1, -run["created_at"])
        return (0, value if run.get("best_metric") in LOWER_IS_BETTER else -value)
    return sorted(runs, key=key)


def filters(runs: list[dict]) -> list[dict]:
    cols = st.columns(3)
    task = cols[0].selectbox("Task", ["all", "classification", "segmentation"], key="compare_task")
    if task != "all":
        runs = [r for r in runs if r["task"] == task]
    datasets = sorted({r["dataset_id"] for r in runs})
    chosen = cols[1].multiselect("Datasets", datasets, key="compare_datasets", placeholder="all datasets")
    if chosen:
        runs = [r for r in runs if r["dataset_id"] in chosen]
    status = cols[2].multiselect("Status", (*store.ACTIVE, *store.FINISHED), key="compare_status",
                                 placeholder="any status")
    if status:
        runs = [r for r in runs if r["status"] in status]
    return runs


def curves(runs: list[dict]) -> None:
    by_id = {r["id"]: r for r in runs}
    scored = [r["id"] for r in runs if r.get("best_value") is not None]
    # Curves compare best on one dataset: start from the newest scored run and its dataset's next newest
    default = [i for i in scored if by_id[i]["dataset_id"] == by_id[scored[0]]["dataset_id"]][:3] if scored else []
    picked = st.multiselect("Runs to overlay", list(by_id), default=default, key="compare_runs",
                            format_func=lambda i: w.run_label(by_id[i]))
    if not picked:
        st.caption("Pick runs above to overlay their curves.")
        return
    frame = w.metrics_frame(store.get_metrics_many(picked))
    labels = {i: f"{by_id[i].get('name') or by_id[i]['arch']} ({i})" for i in picked}
    names = [n for n in dict.fromkeys(frame.loc[frame["split"] == "val", "name"]) if n != "loss"]
    if not names:
        st.caption("These runs have not logged a validation epoch yet.")
        return
    first = by_id[picked[0]].get("best_metric")
    name = st.selectbox("Validation metric", names, index=names.index(first) if first in names else 0,
                        format_func=lambda n: w.METRIC_TITLES.get(n, n), key="compare_metric")
    left, right = st.columns(2)
    left.plotly_chart(w.compare_figure(frame, "val", name, labels, f"Validation {w.METRIC_TITLES.get(name, name)}"),
                      key="compare_metric_chart")
    right.plotly_chart(w.compare_figure(frame, "val", "loss", labels, "Validation loss"), key="compare_loss_chart")
    confusions([by_id[i] for i in picked])


def confusions(runs: list[dict]) -> None:
    matrices = [r for r in runs if r["task"] == "classification" and (r.get("best") or {}).get("confusion")]
    if not matrices:
        return
    st.subheader("Confusion matrices at the best epoch")
    st.caption("Rows are the true class, columns the predicted class; the diagonal holds the correct answers.")
    cols = st.columns(min(3, len(matrices)))
    for i, run in enumerate(matrices):
        with cols[i % len(cols)]:
            fig = w.confusion_figure(run["best"]["confusion"], class_names(run["dataset_id"]),
                                     f"{run.get('name') or run['arch']} ({run['id']})")
            st.plotly_chart(fig, key=f"confusion_{run['id']}")


def class_names(dataset_id: str) -> list[str]:
    try:
        return load_manifest(dataset_id)["classes"]
    except UserError:
        return []           # the dataset was deleted: the matrix still shows, with class numbers


st.title("Compare")
with w.shows_errors("Reading the runs"):
    runs = store.list_runs()
    if not runs:
        st.info("No runs to compare yet. Train a few models on the **Train** page, then come back.")
        st.stop()
    shown = ranked(filters(runs))
    if not shown:
        st.info("No run matches these filters.")
        st.stop()
    table = leaderboard(shown)
    st.dataframe(table, hide_index=True, key="leaderboard", column_config={
        "Best value": st.column_config.NumberColumn(format="%.4f"),
        "Test value": st.column_config.NumberColumn(format="%.4f"),
        "Parameters": st.column_config.NumberColumn(format="localized"),
    })
    st.download_button("Download the leaderboard (CSV)", table.to_csv(index=False).encode(),
                       file_name="lightbox-leaderboard.csv", mime="text/csv", key="leaderboard_csv")
    st.subheader("Curves")
    curves(shown)
