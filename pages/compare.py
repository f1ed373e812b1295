"""Compare: the runs of one dataset ranked by one metric, their curves overlaid, confusion matrices, a CSV export."""
from __future__ import annotations

from collections import Counter

import pandas as pd
import streamlit as st

from engine.data.dataset import load_manifest
from engine.data.manifest import manifest_or_none
from engine.diagnosis import compare_runs, diagnose
from engine.errors import UserError
from engine.runs import crossval, start_from, store
from engine.tasks import LOWER_IS_BETTER, TASKS
from pages import _auth as auth
from pages import _curve as learning_curves
from pages import _widgets as w

NOTICED_RUNS = 10          # diagnose the top of the ranking, not hundreds of runs on every rerun


def score(run: dict, metric: str) -> float | None:
    """The run's validation value of `metric` at its best epoch (the checkpoint it keeps)."""
    value = (run.get("best") or {}).get(metric)
    if value is None and run.get("best_metric") == metric:
        value = run.get("best_value")
    return value if isinstance(value, (int, float)) else None


def ranked(runs: list[dict], metric: str) -> list[dict]:
    """Best first by `metric`; runs with no value yet at the end, newest first among them."""
    sign = 1 if metric in LOWER_IS_BETTER else -1

    def key(run: dict):
        value = score(run, metric)
        return (1, -run["created_at"]) if value is None else (0, sign * value)
    return sorted(runs, key=key)


def leaderboard(runs: list[dict], metric: str) -> pd.DataFrame:
    """One row per ranked run with only what tells runs apart at a glance (numbers stay numbers for sorting)."""
    title, rows, rank = w.METRIC_TITLES.get(metric, metric), [], 0
    for run in runs:
        value = score(run, metric)
        rank += value is not None
        rows.append({
            "Rank": rank if value is not None else None, "Run": run["id"], "Name": run.get("name") or "",
            "Model": run["arch"], "Status": run["status"], f"Validation {title}": value,
            "95 % interval (n)": w.interval_text(run.get("best"), metric),
            f"Test {title}": (run.get("test") or {}).get(metric), "Best epoch": run.get("best_epoch"),
            "Training time (s)": round(run.get("train_seconds") or 0.0, 1),
        })
    # Whole numbers with gaps stay whole ("3", not "3.0") for runs that have no score yet
    return pd.DataFrame(rows).astype({"Rank": "Int64", "Best epoch": "Int64"})


def notices(runs: list[dict], metric: str) -> None:
    """What Lightbox notices: whether the top two differ by more than chance, and each run's diagnosis."""
    scored = [r for r in runs if score(r, metric) is not None]
    manifest = manifest_or_none(runs[0]["dataset_id"])
    lines = []
    if len(scored) >= 2 and (verdict := compare_runs(scored[0], scored[1], metric, manifest=manifest)):
        if verdict["within_noise"]:
            lines.append(verdict["message"])
    histories = store.epoch_metrics_many([r["id"] for r in runs[:NOTICED_RUNS]])
    for run in runs[:NOTICED_RUNS]:
        for finding in diagnose(run, histories.get(run["id"], []), manifest):
            lines.append(f"{run.get('name') or run['arch']} ({run['id']}): {finding['message']}")
    if lines:
        with st.expander(f"What Lightbox notices ({len(lines)})", expanded=True):
            for line in lines:
                st.warning(w.as_text(line), icon=":material/lightbulb:")       # run names, class names


def cross_validations(runs: list[dict], metric: str) -> None:
    """Runs of one cross-validation (they share a 'cv:' tag) summarised as mean ± sd with the per-fold values."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        if (run.get("study") or "").startswith(crossval.CV_PREFIX):
            groups.setdefault(run["study"], []).append(run)
    if not groups:
        return
    title = w.METRIC_TITLES.get(metric, metric)
    st.subheader("Cross-validation")
    st.caption(f"Each fold validates on different patients. The mean ± sd of validation {title} estimates how well "
               "these settings generalise; the spread shows how much one split alone could mislead. No fold's model "
               "is the final one: train an ordinary run with the same settings for that.")
    rows = []
    for cv_id, members in groups.items():
        folds = crossval.summary(members)
        stats = folds["cv"].get(metric)
        values = [f["best"].get(metric) for f in folds["folds"]]
        rows.append({"Cross-validation": (members[0].get("name") or cv_id).split(" · fold")[0],
                     "Folds done": f"{sum(f['status'] == 'done' for f in folds['folds'])}/{len(members)}",
                     f"Mean {title}": stats["mean"] if stats else None, "SD": stats["sd"] if stats else None,
                     "Per fold": ", ".join("–" if v is None else f"{v:.3f}" for v in values)})
    number = st.column_config.NumberColumn
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key="crossval_table",
                 column_config={f"Mean {title}": number(format="%.4f"), "SD": number(format="%.4f")})


def settings(runs: list[dict]) -> pd.DataFrame:
    """How each run was set up: a second table, so the ranking itself fits on the screen."""
    rows = []
    for run in runs:
        config = run.get("config") or {}
        rows.append({
            "Run": run["id"], "Learning rate": config.get("lr"), "Batch size": config.get("batch_size"),
            "Optimizer": config.get("optimizer"), "Schedule": config.get("schedule"), "Loss": config.get("loss"),
            "Augmentations": ", ".join(config.get("augment") or []) or "none",
            "Pretrained": _weights(config), "Weights kept": _kept(run, config),
            "Image size": config.get("image_size"), "Parameters": run.get("params"),
            "Epochs": f"{run.get('epoch') or 0}/{run.get('epochs') or 0}",
            "Picked by": w.METRIC_TITLES.get(run.get("best_metric") or "", run.get("best_metric") or ""),
            "Study": run.get("study") or "", "Created": w.when(run.get("created_at")),
        })
    return pd.DataFrame(rows)


def _weights(config: dict) -> str:
    start = config.get("pretrained") or "none"
    label = {"none": "from scratch", "imagenet": "ImageNet"}.get(start, "own file")
    if start.startswith(("run:", "encoder:")):          # one of your runs, a pre-trained encoder
        label = start.replace(":", " ", 1)
    return f"{label}, frozen backbone" if config.get("freeze_backbone") else label


def _kept(run: dict, config: dict) -> str:
    """What a run that started from other weights kept of them, in its own words (engine.runs.start_from)."""
    if (config.get("pretrained") or "none") == "none":
        return ""
    return start_from.start_note(run["id"]) or ""


def _select(where, label: str, options: list[str], key: str, default: str, **kwargs) -> str:
    """A selectbox that falls back to `default` when its last choice is no longer offered."""
    if st.session_state.get(key) not in options:
        st.session_state[key] = default if default in options else options[0]
    return where.selectbox(label, options, key=key, **kwargs)


def dataset_title(dataset_id: str) -> str:
    try:
        return load_manifest(dataset_id).get("name") or dataset_id
    except UserError:
        return f"{dataset_id} (deleted)"


def filters(runs: list[dict]) -> tuple[list[dict], str, str]:
    """Task, then one dataset, then status: only runs of the same dataset are ranked against each other."""
    top = st.columns([1, 2])
    tasks = [t for t in TASKS if any(r["task"] == t for r in runs)]
    task = _select(top[0], "Task", tasks, "compare_task", runs[0]["task"])
    runs = [r for r in runs if r["task"] == task]
    datasets = list(dict.fromkeys(r["dataset_id"] for r in runs))          # newest run's dataset first
    titles = {d: dataset_title(d) for d in datasets}
    dataset = _select(top[1], "Dataset", datasets, "compare_dataset", datasets[0],
                      format_func=lambda d: f"{titles[d]} · {sum(r['dataset_id'] == d for r in runs)} run(s)")
    runs = [r for r in runs if r["dataset_id"] == dataset]
    below = st.columns([1, 2])
    metric = rank_metric(below[0], runs, task)
    status = below[1].multiselect("Status", (*store.ACTIVE, *store.FINISHED), key="compare_status",
                                  placeholder="any status")
    if status:
        runs = [r for r in runs if r["status"] in status]
    return runs, titles[dataset], metric


def rank_metric(where, runs: list[dict], task: str) -> str:
    """One metric ranks every run; it starts on the one most of these runs picked their checkpoint by."""
    logged = {name for r in runs for name in (r.get("best") or {})}
    options = [m for m in w.TASK_METRICS.get(task, ()) if m in logged] or list(w.TASK_METRICS.get(task, ("loss",)))
    monitored = Counter(r.get("best_metric") for r in runs if r.get("best_metric") in options).most_common(1)
    return _select(where, "Rank by", options, "compare_rank_metric", monitored[0][0] if monitored else options[0],
                   format_func=lambda m: f"Validation {w.METRIC_TITLES.get(m, m)}",
                   on_change=lambda: st.session_state.pop("compare_metric", None))    # the curves follow


def show_tables(runs: list[dict], dataset: str, metric: str) -> None:
    title = w.METRIC_TITLES.get(metric, metric)
    table = leaderboard(runs, metric)
    st.caption(f"{len(runs)} run(s) on **{w.as_text(dataset)}**, ranked by validation {title} at each run's best epoch "
               "(the checkpoint it keeps).")
    # Widths left to Streamlit fit each header and its values; only the free-text name is capped
    number = st.column_config.NumberColumn
    st.dataframe(table, hide_index=True, width="stretch", key="leaderboard", column_config={
        "Run": st.column_config.TextColumn(pinned=True), "Name": st.column_config.TextColumn(width="medium"),
        f"Validation {title}": number(format="%.4f"),
        f"Test {title}": number(format="%.4f", help="On the held-out test split, when the dataset has one."),
        "Training time (s)": number(format="%.1f"),
    })
    setup = settings(runs)
    with st.expander("How each run was set up"):
        st.dataframe(setup, hide_index=True, width="stretch", key="leaderboard_settings", column_config={
            "Run": st.column_config.TextColumn(pinned=True),
            "Parameters": number(format="localized"),
            "Picked by": st.column_config.TextColumn(help="The metric this run used to choose its best epoch."),
        })
    export = table.merge(setup, on="Run").assign(Dataset=dataset)
    st.download_button("Download the leaderboard (CSV)", export.to_csv(index=False).encode(),
                       file_name="lightbox-leaderboard.csv", mime="text/csv", key="leaderboard_csv")


def curves(runs: list[dict], metric: str) -> None:
    by_id = {r["id"]: r for r in runs}
    scored = [r["id"] for r in runs if score(r, metric) is not None]
    picked = st.multiselect("Runs to overlay", list(by_id), default=scored[:3], key="compare_runs",
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
    name = st.selectbox("Validation metric", names, index=names.index(metric) if metric in names else 0,
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
actor = auth.page_actor()
with w.shows_errors("Reading the runs"):
    runs = auth.shown_runs(actor, store.list_runs())
    if not runs:
        st.info("No runs to compare yet. Train a few models on the **Train** page, then come back.")
        st.stop()
    shown, dataset, metric = filters(runs)
    if not shown:
        st.info("No run matches these filters.")
        st.stop()
    shown = ranked(shown, metric)
    show_tables(shown, dataset, metric)
    notices(shown, metric)
    cross_validations(shown, metric)
    learning_curves.show_curves(shown)
    st.subheader("Curves")
    curves(shown, metric)
