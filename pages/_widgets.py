"""Drawing helpers shared by the pages: error boxes, run labels, Plotly figures, image tiles, upload spooling.

Nothing here trains or decides anything: it turns engine answers into pictures and widgets into plain values.
"""
from __future__ import annotations

import html
import logging
import re
import secrets
import shutil
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from streamlit.errors import StreamlitAPIException

from engine import workspace
from engine.data.dataset import load_sample  # noqa: F401 - pages call it as w.load_sample
from engine.errors import UserError
from engine.preflight import check_config  # noqa: F401 - pages call it as w.check_config
from engine.runs import store
from engine.tasks import HEADLINE_METRICS, METRIC_TITLES, TASK_METRICS, UNIT_METRICS  # noqa: F401 - pages use w.*
from engine.training.augment import AUGMENTATIONS
from engine.visualize.images import to_rgb, with_mask  # noqa: F401 - pages call them as w.*

log = logging.getLogger("lightbox.ui")

MAX_POINTS = 2000           # a live chart resends the whole figure on every tick: keep it small
STATUS_COLOURS = {"queued": "gray", "starting": "violet", "running": "blue", "done": "green", "failed": "red",
                  "cancelled": "orange", "interrupted": "orange"}
DISCLAIMER = "For research and teaching only. Lightbox is not a medical device; never use it for diagnosis."


# ---- user text ------------------------------------------------------------------------------------------

# Streamlit renders Markdown in st.markdown, titles, captions, alerts, expander and widget labels, radio options,
# image captions and st.table cells, with extras of its own: :red[…] colours, :material/…: icons, :smile: emoji,
# :streamlit:, $…$ LaTeX, ' -> ' arrows, and bare https://…, www.… and e-mail addresses made into links. A name
# typed by a user (run, dataset, study, class, file, DICOM value, ?run=…) or an engine sentence that quotes one must
# come out as the characters typed, never as a link, a picture or formatting.
_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")      # every ASCII punctuation character
_WORD_JOINER = "\u2060"       # invisible and unbreakable
# Where Streamlit (and GFM's bare links) rewrite text after the Markdown is parsed, escapes are already gone: a word
# joiner splits ':' from :smile:, :material/x:, :red[…] and https://, '@' from a domain, 'www' from '.', and
# the two characters of an arrow.
_SPLIT = re.compile(r"(?<=[:@])(?=\S)|(?<=www)(?=\.)|(?<=[-<>~=])(?=[-<>=])", re.IGNORECASE)
_SPACE = re.compile(r"\s+")


def as_text(value: Any) -> str:
    """`value` as Markdown that Streamlit shows as exactly these characters, in any element that renders Markdown.

    Every ASCII punctuation character is backslash-escaped (CommonMark shows an escaped character as itself, so
    'U-Net (run 3).' reads the same), which defeats links, images, emphasis, HTML, headings, lists and LaTeX; an
    invisible word joiner (U+2060) splits what is matched in the parsed text (see _SPLIT); whitespace runs, line
    breaks included, become one space (a new line could start a heading or a list)."""
    text = _SPLIT.sub(_WORD_JOINER, _SPACE.sub(" ", str(value)))
    return _PUNCTUATION.sub(r"\\\1", text)


def plot_text(value: Any) -> str:
    """`value` for a Plotly title, legend, axis label or hover text: Plotly draws <a href>, <b>, <br> and more in
    those strings, and shows &lt; and &amp; as the characters."""
    return html.escape(str(value), quote=False)


# ---- errors -----------------------------------------------------------------------------------------------

@contextmanager
def shows_errors(what: str = "That did not work") -> Iterator[None]:
    """Turn a UserError into its sentence and anything else into a short apology; never a traceback.

    Streamlit's own control flow (st.rerun, st.switch_page, st.stop) derives from BaseException and passes through.
    """
    try:
        yield
    except UserError as err:
        st.error(as_text(err))        # engine sentences quote file, run and dataset names
    except Exception:  # noqa: BLE001 - the page must keep working; the details go to the server log
        log.exception("unexpected error in the UI")
        st.error(f"{what}: something unexpected went wrong. Try again; if it keeps happening, "
                 "the server log has the details.")


# ---- navigation and selection -----------------------------------------------------------------------------

def open_run(run_id: str) -> None:
    """Select a run (a UI selection only; the run lives in the store) and go to the Monitor page."""
    st.session_state["run_id"] = run_id
    try:
        st.switch_page("pages/monitor.py", query_params={"run": run_id})
    except StreamlitAPIException:
        # The page was opened on its own (no navigation registered): say where to look instead.
        st.success(f"Run {as_text(run_id)} is queued; open the Monitor page to follow it.")


def selected_run_id() -> str | None:
    """The run chosen elsewhere: a new ?run=ID in the address wins, else the session's last selection."""
    query = st.query_params.get("run")
    if query and query != st.session_state.get("_address_run"):
        st.session_state["_address_run"] = query
        st.session_state["run_id"] = query
    return st.session_state.get("run_id")


def remember_run_in_address(run_id: str) -> None:
    """Keep ?run=ID in step with the selection, so the address can be bookmarked or shared."""
    st.session_state["_address_run"] = run_id
    if st.query_params.get("run") != run_id:
        st.query_params["run"] = run_id


def run_label(run: dict) -> str:
    title = run.get("name") or run.get("arch", "")
    if run.get("name") and run.get("arch"):
        title = f"{run['name']} ({run['arch']})"
    return f"{title} · {run.get('dataset_id', '')} · {run.get('status', '')}"


def status_badge(status: str) -> None:
    st.badge(status, color=STATUS_COLOURS.get(status, "gray"))


def dataset_label(manifest: dict) -> str:
    total = sum((manifest.get("split_counts") or {}).values())
    size = f" · {total} images" if total else ""
    return f"{manifest.get('name') or manifest['id']} · {manifest.get('task', '?')}{size}"


def synced_selectbox(label: str, options: list[str], shared: str, key: str, **kwargs: Any) -> str:
    """A selectbox whose choice is also st.session_state[shared], so other pages can preselect it."""
    current = st.session_state.get(shared)
    if current in options:
        st.session_state[key] = current
    elif st.session_state.get(key) not in options:
        st.session_state[key] = options[0]

    def remember() -> None:
        st.session_state[shared] = st.session_state[key]
    picked = st.selectbox(label, options, key=key, on_change=remember, **kwargs)
    st.session_state[shared] = picked
    return picked


def pick_dataset(datasets: list[dict], key: str, label: str = "Dataset") -> dict | None:
    """A selectbox over datasets that starts on the one chosen elsewhere this session."""
    if not datasets:
        return None
    by_id = {d["id"]: d for d in datasets}
    picked = synced_selectbox(label, list(by_id), "dataset_id", key, format_func=lambda i: dataset_label(by_id[i]))
    return by_id[picked]


def augmentation_sliders(names: list[str], prefix: str) -> dict[str, dict[str, float]]:
    """One slider per parameter of each chosen augmentation (Data preview and Train use the same ones)."""
    values: dict[str, dict[str, float]] = {}
    for name in names:
        spec = AUGMENTATIONS[name]
        cols = st.columns(max(1, len(spec.params)) + 1)
        cols[0].markdown(f"**{spec.title}**  \n{spec.description}")
        values[name] = {p.name: col.slider(p.label, float(p.low), float(p.high), float(p.default), float(p.step),
                                           key=f"{prefix}_{name}_{p.name}")
                        for col, p in zip(cols[1:], spec.params)}
    return values


# ---- engine adapters --------------------------------------------------------------------------------------

# ---- uploads ----------------------------------------------------------------------------------------------

def uploads_dir() -> Path:
    path = workspace.home() / "uploads"
    path.mkdir(parents=True, exist_ok=True)
    return path


def safe_parts(name: str) -> list[str]:
    """Folder parts of an uploaded file's name, without anything that could leave the upload folder."""
    parts = [p for p in re.split(r"[\\/]+", name) if p not in ("", ".", "..")]
    return [re.sub(r"[^\w.\- ]", "_", p)[:120] for p in parts] or ["upload"]


def spool_uploads(files: list, keep_folders: bool = True) -> Path:
    """Write uploaded files to a fresh folder in the workspace (with their sub-folders, if kept) and return it.

    Streamlit holds uploads in memory; ingest reads from disk, and the folder is removed once ingested.
    """
    folder = uploads_dir() / secrets.token_hex(6)
    folder.mkdir(parents=True, exist_ok=True)
    for upload in files:
        parts = safe_parts(upload.name)
        target = folder.joinpath(*(parts if keep_folders else parts[-1:]))
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as out:
            out.write(upload.getbuffer())
    return folder


def spool_one(upload, subfolder: str) -> Path:
    """Write one upload to disk once per upload (keyed by its file id) and return the path."""
    folder = uploads_dir() / subfolder
    folder.mkdir(parents=True, exist_ok=True)
    suffix = Path(safe_parts(upload.name)[-1]).suffix
    target = folder / f"{safe_parts(upload.file_id)[-1]}{suffix}"
    if not target.exists():
        with open(target, "wb") as out:
            out.write(upload.getbuffer())
    return target


def remove_quietly(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def short_name(path: str) -> str:
    """Only the file name: folder names of an upload can hold patient names."""
    return safe_parts(str(path))[-1]


# ---- pictures ---------------------------------------------------------------------------------------------

def image_grid(pictures: list[np.ndarray], captions: list[str], columns: int = 4) -> None:
    """Pictures in rows of `columns`; captions are plain text (file and class names), shown as typed."""
    for start in range(0, len(pictures), columns):
        cols = st.columns(columns)
        for col, picture, caption in zip(cols, pictures[start:start + columns], captions[start:start + columns]):
            col.image(picture, caption=as_text(caption), width="stretch")


# ---- curves -----------------------------------------------------------------------------------------------

def metrics_frame(rows: list[dict]) -> pd.DataFrame:
    columns = ["run_id", "epoch", "step", "split", "name", "value"]
    if not rows:
        return pd.DataFrame(columns=columns)
    return pd.DataFrame(rows)[columns]


def series(frame: pd.DataFrame, split: str, name: str, x: str = "epoch") -> pd.DataFrame:
    """One named curve, sorted by x, with the last value kept when an x repeats (a resumed epoch)."""
    part = frame[(frame["split"] == split) & (frame["name"] == name)].dropna(subset=["value"])
    return part.drop_duplicates(subset=[x], keep="last").sort_values(x)


def curve(columns: dict[str, list], split: str, name: str, x: str = "epoch",
          also: str = "step") -> tuple[list, list, list]:
    """x, value and the `also` column of one named curve, sorted by x, the last value kept when an x repeats
    (a resumed epoch): `series` in plain Python over columns read once. The live panel draws ~8 curves every
    few seconds, and pandas' per-call overhead was most of its CPU (benchmarks/monitor.md)."""
    last: dict = {}
    for at, other, sp, nm, value in zip(columns[x], columns[also], columns["split"], columns["name"],
                                        columns["value"]):
        if nm == name and sp == split and value is not None and value == value:     # value == value: not NaN
            last[at] = (value, other)
    xs = sorted(last)
    return xs, [last[k][0] for k in xs], [last[k][1] for k in xs]


def curve_columns(rows: list[dict]) -> dict[str, list]:
    """Metric rows (as the store returns them) as plain columns, the input of `curve` and the live figures."""
    return {c: [row[c] for row in rows] for c in ("epoch", "step", "split", "name", "value")}


def downsample(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Bucket means: at most max_points points, same overall shape."""
    if len(x) <= max_points:
        return x, y
    buckets = np.array_split(np.arange(len(x)), max_points)
    return (np.array([x[b].mean() for b in buckets]), np.array([y[b].mean() for b in buckets]))


def smooth(y: np.ndarray, weight: float = 0.9) -> np.ndarray:
    """Exponential moving average with bias correction (as TensorBoard draws noisy step losses)."""
    return pd.Series(y).ewm(alpha=1 - weight, adjust=True).mean().to_numpy()


def _figure(traces: list[dict], title: str, x_title: str, y_title: str, unit: bool = False,
            max_epoch: int | None = None, validate: bool = True) -> go.Figure:
    """One Figure from plain trace dicts. Building it in one call, not trace by trace with add_scatter and
    update_layout, makes a live refresh ~4x cheaper — CPU that a CPU training run would otherwise lose; the live
    curves also skip plotly's property validation (another ~8x on building; a test validates them)."""
    xaxis: dict = {"title": {"text": x_title}}
    if x_title == "epoch" and max_epoch and max_epoch <= 20:
        xaxis["dtick"] = 1          # whole epochs only (no 1.2, 1.4 …) while they are few enough to label
    yaxis: dict = {"title": {"text": y_title}}
    if unit:
        yaxis["range"] = [-0.02, 1.02]      # scores live in [0, 1]: a flat 1.0 must not get a 0-2 axis
    layout = {"title": {"text": title}, "xaxis": xaxis, "yaxis": yaxis, "height": 340,
              "margin": {"l": 10, "r": 10, "t": 40, "b": 10}, "legend": {"orientation": "h", "y": -0.25}}
    return go.Figure(data=traces, layout=layout, _validate=validate)


def _line(x, y, name: str, **style) -> dict:
    # Float arrays, not lists: plotly copies a figure twice on its way to the browser and sends arrays as one
    # base64 block, which costs a fraction of walking a list point by point.
    return {"type": "scatter", "x": np.asarray(x, dtype=float), "y": np.asarray(y, dtype=float), "name": name,
            "mode": "lines", **style}


def loss_figure(columns: dict[str, list]) -> go.Figure:
    """Per-step training loss (faint raw, bold smoothed) with per-epoch train and validation loss on top."""
    traces = []
    steps, losses, _ = curve(columns, "train", "loss", x="step", also="epoch")
    if steps:
        raw = np.asarray(losses, dtype=float)
        # Smooth before thinning out, so the smoothing does not depend on how long the run is
        x, y = downsample(np.asarray(steps, dtype=float), raw)
        _, y_smooth = downsample(np.asarray(steps, dtype=float), smooth(raw, weight=0.98 if len(raw) > 500 else 0.9))
        traces.append(_line(x, y, "train loss (each step)", opacity=0.3, line={"color": "#1f6feb", "width": 1}))
        traces.append(_line(x, y_smooth, "train loss (smoothed)", line={"color": "#1f6feb"}))
    for split, name, label, colour in (("train", "epoch_loss", "train loss (epoch mean)", "#0b3d91"),
                                       ("val", "loss", "validation loss", "#d1242f")):
        epochs, values, steps = curve(columns, split, name)        # one point per epoch, at its last step
        if epochs:
            traces.append(_line(steps, values, label, mode="lines+markers", customdata=epochs,
                                hovertemplate="epoch %{customdata}: %{y:.4f}", line={"color": colour}))
    return _figure(traces, "Loss", "optimizer step", "loss", validate=False)


def metric_figure(columns: dict[str, list], task: str) -> go.Figure:
    """The task's headline metrics per epoch, with the training value dashed where it is logged. Pixel accuracy
    is left out on purpose: near 1 beside a Dice near 0, it reads as success (engine.tasks.METRIC_NOTES)."""
    traces = []
    palette = ["#d1242f", "#1f6feb", "#1a7f37", "#8250df"]
    for colour, name in zip(palette, HEADLINE_METRICS.get(task, ())):
        epochs, values, _ = curve(columns, "val", name)
        if epochs:
            traces.append(_line(epochs, values, f"validation {METRIC_TITLES[name]}",
                                mode="lines+markers", line={"color": colour}))
        epochs, values, _ = curve(columns, "train", name)
        if epochs:
            traces.append(_line(epochs, values, f"train {METRIC_TITLES[name]}",
                                line={"color": colour, "dash": "dash"}))
    return _figure(traces, "Scores (validation solid, training dashed)", "epoch", "score", unit=True,
                   max_epoch=max(columns["epoch"], default=None), validate=False)


def compare_figure(frame: pd.DataFrame, split: str, name: str, labels: dict[str, str], title: str) -> go.Figure:
    """One curve per run of the same metric, against epoch; `labels` (run names) are plain text."""
    traces = []
    for run_id, part in frame.groupby("run_id", sort=False):
        curve = series(part, split, name)
        if len(curve):
            traces.append(_line(curve["epoch"], curve["value"], plot_text(labels.get(run_id, run_id)),
                                mode="lines+markers"))
    return _figure(traces, title, "epoch", METRIC_TITLES.get(name, name), unit=name in UNIT_METRICS,
                   max_epoch=frame["epoch"].max() if len(frame) else None)


def confusion_figure(matrix: list[list[float]], classes: list[str], title: str) -> go.Figure:
    """Rows are the true class, columns the predicted one (counts as given); class names and title are plain text."""
    z = np.asarray(matrix, dtype=float)
    names = [plot_text(c) for c in classes] if len(classes) == len(z) else [str(i) for i in range(len(z))]
    text = z.astype(int).astype(str) if np.all(z == z.round()) else z.round(2).astype(str)
    heatmap = {"type": "heatmap", "z": z.tolist(), "x": names, "y": names, "colorscale": "Blues", "showscale": False,
               "text": text.tolist(), "texttemplate": "%{text}",
               "hovertemplate": "true %{y}, predicted %{x}: %{z}<extra></extra>"}
    fig = _figure([heatmap], plot_text(title), "predicted", "true")
    fig.update_yaxes(autorange="reversed")
    return fig


def metric_rows(run: dict) -> list[dict]:
    """All metric rows of a run, fetched incrementally: each poll asks the store only for rows it has not seen.

    A resume deletes rows after the last checkpoint, so the cache restarts whenever the run starts again.
    """
    token = (run["id"], run.get("attempts"), run.get("started_at"))
    cache = st.session_state.get("_metric_cache")
    if not cache or cache["token"] != token:
        cache = st.session_state["_metric_cache"] = {"token": token, "last": 0, "rows": []}
    new = store.get_metrics(run["id"], after_id=cache["last"])
    if new:
        cache["rows"].extend(new)
        cache["last"] = new[-1]["id"]
    return cache["rows"]


# ---- numbers ----------------------------------------------------------------------------------------------

def interval_text(scores: dict | None, metric: str) -> str:
    """'0.71–0.88 (n=12)' from a stored 95 % interval of a metric and the images it was measured on; 'n=12' or ''
    when the run has no interval (runs from before intervals existed)."""
    scores = scores or {}
    low_high, n = scores.get(f"{metric}_ci"), scores.get(f"{metric}_n", scores.get("n"))
    if not isinstance(low_high, list) or len(low_high) != 2 or any(v is None or v != v for v in low_high):
        return f"n={n}" if n else ""
    return f"{low_high[0]:.2f}–{low_high[1]:.2f}" + (f" (n={n})" if n else "")


def when(timestamp: float | None) -> str:
    """A moment in UTC, said so: the server's clock zone is not the reader's, and deadlines are set in UTC."""
    if not timestamp:
        return "–"
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def when_iso(iso: str | None) -> str:
    """An ISO 8601 UTC time from the engine ("2026-11-30T06:00:00Z") the way `when` writes moments."""
    if not iso:
        return "–"
    try:
        return when(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return as_text(iso)


def duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "–"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def millions(count: int | None) -> str:
    if not count:
        return "–"
    return f"{count / 1e6:.2f} M" if count >= 1e5 else f"{count:,}"
