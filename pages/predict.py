"""Predict: try a trained model on new images: probabilities or masks, Grad-CAM, Dice against a mask, export."""
from __future__ import annotations

import tempfile
from io import StringIO
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from engine.accounts.actor import Actor
from engine.data.dataset import load_sample
from engine.errors import UserError
from engine.inference.batch import (
    mask_png,
    masks_by_image_stem,
    predict_zip,
    results_csv,
)
from engine.inference.export import export_zip
from engine.inference.predict import (
    Prediction,
    Predictor,
    held_out_samples,
    load_predictor,
    predictable_runs,
)
from engine.models.registry import get_spec
from engine.tasks import HEADLINE_METRICS, METRIC_NOTES, auc_accuracy_note
from engine.visualize.gradcam import heat_scale
from pages import _auth as auth
from pages import _widgets as w

MAX_SHOWN = 12          # more images than this belong in a ZIP: every rerun predicts them all again
COMPARE_LEGEND = "filled: model · green outline: the given mask"
SCALE_CAPTION = "Colour scale of the map: attention from low (blue) to high (red)"


def pick_run(actor: Actor | None = None) -> dict | None:
    runs = {r["id"]: r for r in auth.shown_runs(actor, predictable_runs())}
    if not runs:
        st.info("There is no trained model yet; train one on the Train page, then come back.")
        return None
    w.selected_run_id()     # a ?run=ID in the address preselects it
    run_id = w.synced_selectbox("Trained run", list(runs), "run_id", "predict_run",
                                format_func=lambda i: w.run_label(runs[i]))
    return runs[run_id]


def run_card(run: dict, predictor: Predictor, test_hidden: bool = False) -> None:
    """Architecture, validation and held-out test results of the chosen run."""
    spec = get_spec(run["arch"], predictor.task)
    st.markdown(f"**{spec.title}** · {predictor.task} · classes: {w.as_text(', '.join(predictor.classes))} · "
                f"input {predictor.size}×{predictor.size} px")
    st.caption(spec.note)
    st.dataframe(score_table(run, predictor.task), hide_index=True, key="predict_scores")
    for note in notes(run, predictor.task):
        st.caption(note)
    test = run.get("test")
    with st.expander("Held-out test report"):
        if test_hidden:
            st.write("The test split of this assignment is hidden until your instructor releases it.")
        elif not test:
            st.write("This run has no test-split results (its dataset had no test images).")
        else:
            st.caption(f"{test.get('n', '?')} test images, never used for training or for picking the checkpoint.")
            st.table({k: [f"{v:.4f}"] for k, v in test.items() if isinstance(v, float)})
            if test.get("confusion"):
                st.plotly_chart(w.confusion_figure(test["confusion"], predictor.classes, "Test confusion matrix"),
                                key="predict_test_confusion")


def score_table(run: dict, task: str) -> pd.DataFrame:
    """One row per headline metric (a table, not tiles: long names such as 'Balanced accuracy' fit), each score
    with its 95 % interval and the number of images it rests on."""
    rows = []
    for name in HEADLINE_METRICS.get(task, ()):
        row = {"Score": w.METRIC_TITLES.get(name, name)}
        for split, scores in (("Validation", run.get("best") or {}), ("Test", run.get("test") or {})):
            row[split] = _number(scores.get(name))
            row[f"{split} 95 % interval (n)"] = w.interval_text(scores, name)
        rows.append(row)
    return pd.DataFrame(rows)


def notes(run: dict, task: str) -> list[str]:
    """What the numbers above do and do not say, in words (empty slices, AUC against accuracy)."""
    out = []
    best = run.get("best") or {}
    if task == "segmentation":
        out.append(METRIC_NOTES["dice"])
        if best.get("empty_total"):
            out.append(f"{best.get('empty_correct', 0)} of {best['empty_total']} validation images with nothing to "
                       "find were correctly left empty.")
    elif (note := auc_accuracy_note(best)):
        out.append(note)
    return out


def _number(value) -> str:
    return "–" if not isinstance(value, (int, float)) or value != value else f"{value:.3f}"


def gather(predictor: Predictor, tta: bool, actor: Actor | None = None, test_hidden: bool = False) -> list[Prediction]:
    """Predictions for the images chosen in one of three ways: uploads, a ZIP, or the test split (not while an
    assignment hides it from this student)."""
    sources = ["Upload images", "Upload a ZIP"] + ([] if test_hidden else ["Test-split samples"])
    source = st.radio("Images", sources, horizontal=True, key="predict_source")
    if source == "Upload images":
        return from_uploads(predictor, tta)
    if source == "Upload a ZIP":
        from_zip(predictor, tta, actor)
        return []
    return from_test_split(predictor, tta)


def from_uploads(predictor: Predictor, tta: bool) -> list[Prediction]:
    files = st.file_uploader("Images (PNG, JPEG, TIFF, BMP or DICOM)", accept_multiple_files=True,
                             key="predict_files")
    masks = {}
    if predictor.task == "segmentation":
        uploads = st.file_uploader("Ground-truth masks (optional, same file names as the images)",
                                   accept_multiple_files=True, key="predict_masks")
        masks = masks_by_image_stem([(w.short_name(m.name), m) for m in uploads or []])
    predictions = []
    for upload in (files or [])[:MAX_SHOWN]:
        name = w.short_name(upload.name)
        mask = masks.get(Path(name).stem)
        if mask is None and len(files) == 1 and len(masks) == 1:
            mask = next(iter(masks.values()))       # one image, one mask: a pair whatever their names
        try:
            predictions += predictor.predict_file(upload.getvalue(), name, tta, mask.getvalue() if mask else None,
                                                  w.short_name(mask.name) if mask else "")
        except UserError as err:
            st.error(w.as_text(err))
    if files and len(files) > MAX_SHOWN:
        st.warning(f"Showing the first {MAX_SHOWN} of {len(files)} images; upload a ZIP to predict them all.")
    return predictions


def from_zip(predictor: Predictor, tta: bool, actor: Actor | None = None) -> None:
    upload = st.file_uploader("ZIP of images (masks/ folder optional)", type="zip", key="predict_zip")
    if not upload:
        return
    path = w.spool_one(upload, "predict")
    try:
        with tempfile.TemporaryDirectory() as out, st.spinner("Predicting every image in the ZIP…"):
            csv_path = predict_zip(predictor.run_id, path, out, tta, actor=actor)
            text = csv_path.read_text()
    finally:
        w.remove_quietly(path)
    table = pd.read_csv(StringIO(text))
    st.dataframe(table, hide_index=True)
    st.download_button("Download results (CSV)", text, "results.csv", "text/csv", key="predict_zip_csv")


def from_test_split(predictor: Predictor, tta: bool) -> list[Prediction]:
    try:
        samples = {s["key"]: s for s in held_out_samples(predictor.config.dataset_id)}
    except UserError as err:
        st.info(w.as_text(f"{err} Upload images instead."))
        return []
    if not samples:
        st.info("This run's dataset has no test split; upload images instead.")
        return []
    keys = st.multiselect("Test images", list(samples), default=list(samples)[:3], key="predict_samples",
                          format_func=lambda k: w.short_name(samples[k]["source"]), max_selections=MAX_SHOWN)
    out = []
    for key in keys:
        image, mask = load_sample(predictor.config.dataset_id, key)
        out.append(predictor.predict_stored(image, mask, tta, w.short_name(samples[key]["source"])))
    return out


def probability_chart(prediction: Prediction, key: str) -> None:
    items = sorted(prediction.probabilities.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[p for _, p in items], y=[w.plot_text(c) for c, _ in items], orientation="h",
                           marker_color=["#1f6feb" if c == prediction.label else "#9aa4b2" for c, _ in items],
                           text=[f"{p:.1%}" for _, p in items], textposition="auto"))
    fig.update_layout(title="Class probabilities", xaxis=dict(range=[0, 1], tickformat=".0%"),
                      height=80 + 40 * len(items), margin=dict(l=10, r=10, t=40, b=10))
    st.plotly_chart(fig, key=key)


def show_classification(predictor: Predictor, prediction: Prediction, index: int, explain: bool) -> None:
    left, middle, right = st.columns(3)
    left.image(prediction.rgb(), caption=w.as_text(f"{_title(prediction)} → {prediction.label}"), width="stretch")
    with middle:
        probability_chart(prediction, key=f"predict_probs_{index}")
    if not explain:
        return
    with right:
        try:
            cam = predictor.explain(prediction.image)
            st.image(cam.overlay, caption=f"Grad-CAM for '{w.as_text(predictor.classes[cam.class_index])}'",
                     width="stretch")
        except UserError as err:
            st.info(w.as_text(err))
            cam = predictor.explain(prediction.image, method="saliency")
            st.image(cam.overlay, caption="Gradient saliency instead: pixels that most change the score",
                     width="stretch")
        # PNG: a JPEG would smear the ramp's colours, the very thing the legend is for
        st.image(heat_scale(), caption=SCALE_CAPTION, output_format="PNG")
        if cam.note:
            st.caption(w.as_text(cam.note))


def show_segmentation(prediction: Prediction, index: int, opacity: float) -> None:
    left, right = st.columns(2)
    if prediction.truth is None:
        left.image(prediction.blend(opacity), caption=w.as_text(_title(prediction)), width="stretch")
    else:               # PNG: JPEG would blur the one-pixel outline into the fill
        left.image(prediction.compare(opacity), caption=f"{w.as_text(_title(prediction))} · {COMPARE_LEGEND}",
                   width="stretch",
                   output_format="PNG")
    with right:
        st.metric("Foreground", f"{prediction.foreground_fraction:.1%} of the image")
        # st.table renders Markdown in its cells: class names are escaped like any other text
        st.table({"class": [w.as_text(c) for c in prediction.areas], "pixels": list(prediction.areas.values())})
        if prediction.scores:
            st.metric("Dice vs the given mask", f"{prediction.scores['dice_mean']:.3f}",
                      help="Mean over the foreground classes")
            st.caption(f"IoU {prediction.scores['iou_mean']:.3f}")
        st.download_button("Download mask (PNG)", mask_png(prediction), f"{Path(prediction.name).stem}_mask.png",
                           "image/png", key=f"predict_mask_{index}")


def _title(prediction: Prediction) -> str:
    return prediction.name + (f" (frame {prediction.frame + 1})" if prediction.frame else "")


def export_panel(run_id: str, actor: Actor | None = None) -> None:
    st.subheader("Export the model")
    st.caption("TorchScript model, preprocessing.json and a model card, for use outside Lightbox.")
    key = f"predict_export_{run_id}"
    if st.button("Prepare export", key="predict_export_build"):
        with w.shows_errors("Exporting"), st.spinner("Tracing the model…"):
            st.session_state[key] = export_zip(run_id, actor=actor)
    if key in st.session_state:
        st.download_button("Download model (ZIP)", st.session_state[key], f"lightbox-{run_id}.zip",
                           "application/zip", key="predict_export_download")


def main() -> None:
    st.title("Predict")
    st.caption(w.DISCLAIMER)
    actor = auth.page_actor()
    run = pick_run(actor)
    if run is None:
        return
    test_hidden = auth.test_hidden(actor, run["dataset_id"])
    with w.shows_errors("Loading the model"):
        predictor = load_predictor(run["id"], actor=actor)
        run_card(run, predictor, test_hidden)
        cols = st.columns(3)
        tta = cols[0].checkbox("Test-time augmentation", key="predict_tta",
                               help="Average the prediction with that of the flipped image.")
        opacity = explain = 0.0
        if predictor.task == "segmentation":
            opacity = cols[1].slider("Mask opacity", 0.0, 1.0, 0.45, 0.05, key="predict_opacity")
        else:
            explain = cols[1].checkbox("Show Grad-CAM", value=True, key="predict_gradcam")
        predictions = gather(predictor, tta, actor, test_hidden)
        for index, prediction in enumerate(predictions):
            st.divider()
            if predictor.task == "classification":
                show_classification(predictor, prediction, index, bool(explain))
            else:
                show_segmentation(prediction, index, opacity)
        if predictions:
            st.download_button("Download results (CSV)", results_csv([p.row() for p in predictions]),
                               "results.csv", "text/csv", key="predict_results_csv")
        st.divider()
        export_panel(run["id"], actor)


main()
