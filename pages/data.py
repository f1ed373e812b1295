"""Data: bring images in, inspect a dataset, window a DICOM file, and preview augmentations."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from engine.accounts import access
from engine.data import dicom
from engine.data.dataset import SPLITS, list_datasets, load_manifest
from engine.data.demo import DEMOS, ensure_demo_dataset
from engine.data.ingest import ingest, ingest_files
from engine.data.resplit import resplit
from engine.runs import lifecycle
from engine.training.augment import AUGMENTATIONS, preview
from pages import _auth as auth
from pages import _widgets as w

SECTIONS = ("Bring data", "Explore a dataset", "DICOM viewer", "Augmentation preview")
IMAGE_TYPES = ["png", "jpg", "jpeg", "tif", "tiff", "bmp", "dcm", "dicom"]
LAYOUT_HELP = """
**Classification**: one folder per class; optional `train/`, `val/`, `test/` folders around them fix the split.
```
scans.zip
├── normal/      img001.png, img002.dcm, …
└── pneumonia/   img101.png, …
```
**Segmentation**: images and masks with the same file names (a mask may add `_mask`, `_seg` or `_gt`);
masks hold class numbers (0 = background), 0/255, or a few grey levels such as 0/85/170/255 (classes 0–3).
```
scans.zip
├── images/   case01.png, case02.png, …
└── masks/    case01.png, case02.png, …
```
DICOM works anywhere, also without a file extension. Images of one patient stay in one split: the patient is
the DICOM PatientID, a folder per patient (`normal/patient07/img3.png`, `images/p01/slice_3.png`) or an ID at the
start of the file name (`SCD0000101_0048.png`), whichever fits the upload; you can choose another grouping below.
"""
GROUP_CHOICES = {
    "auto": "Automatic: DICOM patient ID, a folder per patient, or an ID at the start of the file names",
    "none": "No grouping: every image is placed in a split on its own",
    "folder": "By folder: each folder below the class folder (or around images/) is one patient",
    "pattern": "By a pattern on the file path (a regular expression)",
}
GROUP_HELP = ("Images of one patient look alike. If some are in training and others in the test split, the test "
              "score measures how well the model recognises the patient, not the disease.")
PATTERN_HELP = ("Python regular expression searched in each file's path as uploaded (e.g. normal/SCD0000101_0048.png); "
                "its first bracketed part, or else the whole match, names the patient. Files it does not match are "
                "split on their own.")


def goto_section(name: str) -> None:
    st.session_state["data_section"] = name


# ---- (a) bring data ---------------------------------------------------------------------------------------

def bring_data() -> None:
    done = st.session_state.pop("ingested", None)
    if done:
        st.success(f"Dataset **{w.as_text(done['name'])}** is ready: {done['samples']} images"
                   + (f", {len(done['problems'])} file(s) skipped." if done["problems"] else "."))
        if done.get("groups"):
            st.caption(describe_groups(done["groups"]))
        for warning in done.get("warnings") or []:
            st.warning(w.as_text(warning["message"]))
        st.button("Explore it", on_click=goto_section, args=("Explore a dataset",), key="explore_new")

    st.subheader("Upload your images")
    task = st.radio("What should the model learn?", ("classification", "segmentation"), horizontal=True,
                    key="upload_task", format_func=lambda t: {"classification": "Classification: one label per image",
                                                              "segmentation": "Segmentation: a mask per image"}[t])
    with st.expander("How to lay out the files"):
        st.markdown(LAYOUT_HELP)
    group_by = group_by_control("upload")
    kind = st.radio("Upload", ("zip", "folder", "files"), horizontal=True, key="upload_kind",
                    format_func=lambda k: {"zip": "A ZIP file", "folder": "A folder", "files": "Loose files"}[k])
    turn = st.session_state.setdefault("upload_turn", 0)     # a new key empties the uploader after ingest
    archive, loose = None, []
    if kind == "zip":
        archive = st.file_uploader("A ZIP file", type=["zip"], key=f"zip_{turn}")
    elif kind == "folder":
        loose = st.file_uploader("A folder (its sub-folders are kept)", accept_multiple_files="directory",
                                 key=f"folder_{turn}")
    else:
        loose = st.file_uploader("Image files (PNG, JPEG, TIFF, BMP, DICOM)", type=IMAGE_TYPES,
                                 accept_multiple_files=True, key=f"files_{turn}")
    name = st.text_input("Dataset name (optional)", key="upload_name", placeholder="e.g. Chest X-ray pilot")
    if st.button("Ingest", type="primary", disabled=not (archive or loose) or group_by is None, key="ingest"):
        with w.shows_errors("Reading the upload"):
            result = ingest_upload(archive, loose or [], task, name.strip(), group_by)
            st.session_state["dataset_id"] = result.dataset_id
            st.session_state["ingested"] = {"name": load_manifest(result.dataset_id)["name"],
                                            "samples": result.report.samples, "problems": result.report.problems,
                                            "groups": result.report.groups, "warnings": result.report.warnings}
            st.session_state["upload_turn"] = turn + 1
            st.rerun()

    st.subheader("Or use a built-in demo")
    kind = st.selectbox("Demo dataset", list(DEMOS), key="demo_kind",
                        format_func=lambda k: f"{DEMOS[k]['title']} ({k})")
    st.caption(DEMOS[kind]["description"])
    if st.button("Create the demo dataset", key="make_demo"):
        with w.shows_errors("Preparing the demo"):
            with st.spinner("Making the demo images (only the first time)…"):
                st.session_state["dataset_id"] = ensure_demo_dataset(kind)
            st.session_state["ingested"] = {"name": DEMOS[kind]["title"], "samples": _sample_count(), "problems": []}
            st.rerun()


def _sample_count() -> int:
    return len(load_manifest(st.session_state["dataset_id"])["samples"])


def group_by_control(prefix: str) -> str | None:
    """The grouping chosen on the page: auto, none, folder or a pattern (None while the pattern box is empty)."""
    choice = st.selectbox("Keep each patient's images in one split", list(GROUP_CHOICES), key=f"{prefix}_group_by",
                          format_func=GROUP_CHOICES.get, help=GROUP_HELP)
    if choice != "pattern":
        return choice
    pattern = st.text_input("Pattern", key=f"{prefix}_group_pattern", placeholder=r"([^/_]+)_[^/]*$",
                            help=PATTERN_HELP)
    if not pattern.strip():
        st.caption("Type a pattern, e.g. `([^/_]+)_[^/]*$` for the part of the file name before its first '_'.")
    return pattern.strip() or None


def describe_groups(groups: dict) -> str:
    """One sentence: how images were grouped into patients and how many groups that made."""
    key, count = groups.get("key", "none"), groups.get("count", 0)
    if key == "none" or not count:
        return "No patient grouping: each image was placed in a split on its own."
    how = {"dicom": f"by DICOM patient ID: {count} patients",
           "filename prefix": f"by the ID at the start of the file names: {count} patients",
           "folder": f"by folder: {count} folders"}.get(key, f"by the pattern '{w.as_text(key)}': {count} groups")
    spanning = groups.get("spanning_splits", 0)
    tail = (f", but {spanning} of them lie in more than one of the train/, val/ and test/ folders you made."
            if spanning else ", each inside one split.")
    return f"Images were grouped {how}{tail}"


def owned() -> dict:
    """An upload belongs to the user who made it (in a class); without accounts, to nobody, as always."""
    return {} if ACTOR is None else {"owner": ACTOR.name}


def ingest_upload(archive, loose: list, task: str, name: str, group_by: str = "auto"):
    """Ingest the upload with a progress bar. A ZIP is written to the workspace once (it may be large) and
    removed afterwards; loose files go through the engine's upload rules (a name the disk cannot hold, or a file
    that is also a folder, is skipped and named in the report instead of losing the upload)."""
    bar = st.progress(0.0, text="Reading images…")

    def progress(done: int, total: int) -> None:
        if total and (done == total or done % max(1, total // 100) == 0):   # ≤ 100 updates, however many files
            bar.progress(done / total, text=f"Read {done} of {total} files")
    try:
        if not archive:
            files = [("/".join(w.safe_parts(upload.name)), upload.getbuffer()) for upload in loose]
            return ingest_files(files, task, name=name or "Uploaded images", progress=progress, group_by=group_by,
                                **owned())
        folder = w.spool_uploads([archive], keep_folders=False)
        try:
            return ingest(folder / w.safe_parts(archive.name)[-1], task, progress=progress, group_by=group_by,
                          name=name or w.short_name(archive.name).rsplit(".", 1)[0], **owned())
        finally:
            w.remove_quietly(folder)
    finally:
        bar.empty()


# ---- (b) explore ------------------------------------------------------------------------------------------

def explore() -> None:
    manifest = _pick_dataset("explore_dataset")
    if manifest is None:
        return
    hidden = manifest.get("test_hidden")
    report = manifest.get("report") or {}
    samples = pd.DataFrame(manifest["samples"])
    classification = manifest["task"] == "classification"
    # The task is a word, not a number: as text it never gets cut to "classifica…" in a narrow metric tile
    st.markdown(f"**{manifest['task'].capitalize()}** dataset · classes: {w.as_text(', '.join(manifest['classes']))}")
    cols = st.columns(4)
    cols[0].metric("Images", len(samples))
    cols[1].metric("Classes", manifest["num_classes"])
    cols[2].metric("Channels", manifest["channels"])
    cols[3].metric("Patients", report.get("patients") or (report.get("groups") or {}).get("count") or "–")
    if hidden:
        st.info(f"The test split ({hidden} images) belongs to an assignment and stays hidden until your instructor "
                "releases it; only the training and validation images are shown.")
    else:           # the checks show copies and patients across the splits, the test split too
        checks(manifest, report)

    left, right = st.columns(2)
    with left:
        st.markdown("**Images per class and split**")
        st.dataframe(counts_table(samples, manifest), key="counts")
    with right:
        st.plotly_chart(balance_figure(samples, manifest), key="balance")

    sizes = pd.DataFrame(sorted((report.get("sizes") or {}).items(), key=lambda kv: -kv[1]),
                         columns=["Size (height x width)", "Images"])
    left, right = st.columns(2)
    left.markdown("**Image sizes**")
    left.dataframe(sizes, hide_index=True, key="sizes")
    right.markdown("**File types**")
    modalities = {f"modality {k}": v for k, v in (report.get("modalities") or {}).items()}
    kinds = {**(report.get("dtypes") or {}), **modalities}
    right.dataframe(pd.DataFrame(list(kinds.items()), columns=["Stored as", "Files"]), hide_index=True, key="dtypes")
    if not classification and report.get("mask_values"):
        st.caption(f"Values found in the masks: {', '.join(map(str, report['mask_values']))} "
                   "(0/255 masks are read as background/foreground).")
        if report.get("mask_levels"):
            mapping = ", ".join(f"{value} → class {label}" for value, label in report["mask_levels"].items())
            st.caption(f"The masks use grey levels; they were read as {mapping}.")

    st.markdown("**Files that were skipped**")
    problems = report.get("problems") or []
    if problems:
        st.dataframe(problems_table(problems), hide_index=True, key="problems")
        st.caption("Only file names are shown: folder names in an upload can contain patient names.")
    else:
        st.success("Every file was read; nothing was skipped.")

    gallery(manifest, samples)
    if hidden:
        return
    groups_panel(manifest, report)
    if auth.is_student(ACTOR) and manifest.get("owner") != ACTOR.name:
        return              # the instructor's dataset: the engine would refuse, so no button
    with st.expander("Delete this dataset"):
        st.caption("Removes the stored images and masks. Runs trained on it keep their results.")
        sure = st.checkbox(f"Yes, delete {w.as_text(manifest['name'])}", key="delete_sure")
        if st.button("Delete", disabled=not sure, key="delete_dataset"):
            with w.shows_errors("Deleting the dataset"):
                lifecycle.delete_dataset(manifest["id"], actor=ACTOR)
                st.session_state.pop("dataset_id", None)
                st.rerun()


def checks(manifest: dict, report: dict) -> None:
    """The dataset warnings in plain words, with the copies side by side and the shortcut drawn per class."""
    st.markdown("**Checks before you train**")
    if "warnings" not in report:
        st.info("This dataset was read before Lightbox checked for leaks and shortcuts; split it again under "
                "Patients and groups below to run the checks.")
        return
    for number, warning in enumerate(report["warnings"]):
        st.warning(w.as_text(warning["message"]))        # quotes file and class names
        if warning["kind"] == "near_duplicates":
            copies_side_by_side(manifest, warning)
        elif warning["kind"] == "shortcut":
            st.plotly_chart(shortcut_figure(warning), key=f"shortcut_{number}")
    if not report["warnings"]:
        st.success("No warning: no patient or copy is on both sides of the split, no simple property of the files "
                   "tells the classes apart, the classes are balanced and the validation and test splits are big "
                   "enough to compare runs." if manifest["task"] == "classification" else
                   "No warning: no patient or copy is on both sides of the split, and the validation and test "
                   "splits are big enough to compare runs.")


def copies_side_by_side(manifest: dict, warning: dict, sets: int = 3) -> None:
    for sources, keys, splits in list(zip(warning["groups"], warning["keys"], warning["splits"]))[:sets]:
        pictures = [w.with_mask(*w.load_sample(manifest["id"], key)) for key in keys[:4]]
        captions = [f"{w.short_name(source)} · {split}" for source, split in zip(sources[:4], splits[:4])]
        w.image_grid(pictures, captions, columns=4)
    if warning["count"] > sets:
        st.caption(f"The first {sets} of {warning['count']} sets of near-identical images.")


def shortcut_figure(warning: dict) -> go.Figure:
    """The property per class: a box per class for numbers, stacked counts for categories."""
    unit = f" ({warning['unit']})" if warning.get("unit") else ""
    fig = go.Figure()
    for name, values in warning["per_class"].items():
        name = w.plot_text(name)                         # a class name, drawn by Plotly
        if warning["value_kind"] == "number":
            fig.add_trace(go.Box(name=name, x=[name], q1=[values["q1"]], median=[values["median"]],
                                 q3=[values["q3"]], lowerfence=[values["min"]], upperfence=[values["max"]]))
        else:
            fig.add_trace(go.Bar(name=name, x=[w.plot_text(v) for v in values], y=list(values.values())))
    fig.update_layout(title=w.plot_text(f"{warning['title']} per class"), height=300,
                      margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      yaxis_title=("" if warning["value_kind"] == "number" else "Images") + unit,
                      barmode="group", showlegend=warning["value_kind"] != "number")
    return fig


def groups_panel(manifest: dict, report: dict) -> None:
    """How images were grouped into patients, a few examples, and a way to split again with another grouping."""
    st.markdown("**Patients and groups**")
    groups = report.get("groups") or {}
    st.caption(describe_groups(groups) if groups else "Grouping was not recorded for this dataset.")
    examples = groups.get("examples") or []
    if examples:
        st.dataframe(pd.DataFrame([{"Group": e["key"], "Images": e["images"], "Split": ", ".join(e["splits"]),
                                    "Example files": ", ".join(w.short_name(f) for f in e["files"])}
                                   for e in examples]), hide_index=True, key="group_examples")
    with st.expander("Group the images differently"):
        st.caption("Makes a new dataset with the same images split again; runs trained on this one keep their "
                   "results.")
        group_by = group_by_control("regroup")
        if st.button("Split again as a new dataset", disabled=group_by is None, key="regroup"):
            with w.shows_errors("Splitting again"):
                st.session_state["dataset_id"] = resplit(manifest["id"], group_by, actor=ACTOR)
                st.rerun()


def _pick_dataset(key: str) -> dict | None:
    """The chosen dataset's manifest, among those this user may see; a student's copy of an assignment with a hidden
    test has no test samples (and says how many it left out in "test_hidden")."""
    datasets = access.visible_datasets(ACTOR, list_datasets())
    if not datasets:
        st.info("No datasets yet: upload images or create a demo dataset first.")
        st.button("Bring data", on_click=goto_section, args=("Bring data",), key=f"{key}_none")
        return None
    picked = w.pick_dataset(datasets, key=key)
    with w.shows_errors("Opening the dataset"):
        manifest = load_manifest(picked["id"])
        if auth.test_hidden(ACTOR, manifest["id"]):
            kept = [x for x in manifest["samples"] if x["split"] != "test"]
            manifest = {**manifest, "samples": kept, "test_hidden": len(manifest["samples"]) - len(kept)}
        return manifest
    return None


def counts_table(samples: pd.DataFrame, manifest: dict) -> pd.DataFrame:
    splits = [s for s in SPLITS if s in set(samples["split"])]
    if manifest["task"] == "classification":
        labels = samples["label"].map(lambda i: manifest["classes"][int(i)])
        table = pd.crosstab(labels, samples["split"]).reindex(columns=splits, fill_value=0)
        table.index.name, table.columns.name = "Class", None
    else:
        table = samples.groupby("split").size().reindex(splits, fill_value=0).to_frame("Images").T
        table.columns.name = None
    table["total"] = table.sum(axis=1)
    return table


def balance_figure(samples: pd.DataFrame, manifest: dict):
    if manifest["task"] == "classification":
        frame = samples.assign(Class=samples["label"].map(lambda i: w.plot_text(manifest["classes"][int(i)])))
        frame = frame.groupby(["Class", "split"]).size().reset_index(name="Images")
        fig = px.bar(frame, x="Class", y="Images", color="split", barmode="stack", title="Class balance",
                     category_orders={"split": list(SPLITS)})
    else:
        frame = samples.groupby("split").size().reset_index(name="Images")
        fig = px.bar(frame, x="split", y="Images", title="Images per split", category_orders={"split": list(SPLITS)})
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def problems_table(problems: list[dict]) -> pd.DataFrame:
    """Skipped files with the reason; paths are cut to the file name, in the message too."""
    rows = []
    for problem in problems:
        path, short = str(problem.get("file", "")), w.short_name(str(problem.get("file", "")))
        message = str(problem.get("message", ""))
        rows.append({"File": short, "Problem": str(problem.get("kind", "")).replace("_", " "),
                     "What happened": message.replace(path, short) if path else message})
    return pd.DataFrame(rows)


def gallery(manifest: dict, samples: pd.DataFrame) -> None:
    st.markdown("**Sample images**")
    classification = manifest["task"] == "classification"
    cols = st.columns(2)
    split = cols[0].selectbox("Split", ["all", *[s for s in SPLITS if s in set(samples["split"])]], key="gallery_split")
    shown = samples if split == "all" else samples[samples["split"] == split]
    if classification:
        label = cols[1].selectbox("Class", ["all", *manifest["classes"]], key="gallery_class")
        if label != "all":
            shown = shown[shown["label"] == manifest["classes"].index(label)]
    if shown.empty:
        st.caption("No images match.")
        return
    picks = shown.iloc[np.unique(np.linspace(0, len(shown) - 1, min(8, len(shown))).astype(int))]
    pictures, captions = [], []
    for _, row in picks.iterrows():
        image, mask = w.load_sample(manifest["id"], row["key"])
        pictures.append(w.with_mask(image, mask))
        what = manifest["classes"][int(row["label"])] if classification else f"{row['height']}x{row['width']}"
        captions.append(f"{what} · {row['split']}")
    w.image_grid(pictures, captions)
    if not classification:
        st.caption("Masks are drawn in colour over the images.")


# ---- (c) DICOM viewer -------------------------------------------------------------------------------------

def dicom_viewer() -> None:
    st.caption("Window a DICOM image: CT values (Hounsfield units) are mapped to grey levels by a window "
               "centre and width. Try the presets to see lungs, soft tissue or bone.")
    source = st.radio("Image", ("A sample CT slice", "Upload a DICOM file"), horizontal=True, key="dicom_source")
    if source == "Upload a DICOM file":
        upload = st.file_uploader("A DICOM file (.dcm, or a file without extension)", key="dicom_file")
        if upload is None:
            return
        # Read from memory: the viewer leaves no copy of a possibly identifiable file on disk.
        data, label = upload.getvalue(), w.short_name(upload.name)
    else:
        from pydicom.data import get_testdata_file
        data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
        label = "CT_small.dcm (pydicom test data)"
    with w.shows_errors("Reading the DICOM file"):
        ds = dicom.read_dataset(data, label)
        window = choose_window(ds)
        frames = dicom.dicom_frames(ds, window, label)
        index = st.slider("Frame", 1, len(frames), 1, key="dicom_frame") - 1 if len(frames) > 1 else 0
        st.image(w.to_rgb(frames[index]), caption=w.as_text(window_caption(label, window)), width=420)
        with st.expander("DICOM header"):
            st.warning("Headers can contain patient information (name, birth date, IDs, referring doctor). "
                       "Do not share screenshots of this table.")
            rows = dicom.header_summary(ds)
            st.dataframe(pd.DataFrame(rows, columns=["Tag", "Keyword", "Value"]), hide_index=True, key="dicom_header")


def choose_window(ds) -> tuple[float, float] | None:
    presets = dicom.window_presets()
    options = ["From the file", *presets, "Custom"]
    choice = st.selectbox("Window preset", options, key="dicom_preset",
                          format_func=lambda o: o if o in ("From the file", "Custom")
                          else f"{o} (C {presets[o][0]:g} / W {presets[o][1]:g})")
    st.caption("Presets are in Hounsfield units and suit CT; for MR or X-ray use the file's own window.")
    if choice == "From the file":
        return None
    if choice != "Custom":
        return presets[choice]
    cols = st.columns(2)
    center = cols[0].slider("Window centre", -1500, 3000, 40, step=5, key="dicom_center")
    width = cols[1].slider("Window width", 1, 5000, 400, step=5, key="dicom_width")
    return float(center), float(width)


def window_caption(label: str, window: tuple[float, float] | None) -> str:
    if window is None:
        return f"{label} · window from the file"
    return f"{label} · centre {window[0]:g}, width {window[1]:g}"


# ---- (d) augmentation preview -----------------------------------------------------------------------------

def augmentation_preview() -> None:
    manifest = _pick_dataset("augment_dataset")
    if manifest is None:
        return
    samples = manifest["samples"]
    cols = st.columns([3, 1])
    names = cols[0].multiselect("Augmentations", list(AUGMENTATIONS), default=["rotate", "brightness"],
                                key="augment_names", format_func=lambda n: AUGMENTATIONS[n].title)
    number = cols[1].number_input("Sample", 1, len(samples), 1, key="augment_sample")
    params = w.augmentation_sliders(names, "augment")
    seed = st.session_state.setdefault("augment_seed", 0)
    if st.button("New random draw", key="augment_reroll"):
        seed = st.session_state["augment_seed"] = seed + 1
    with w.shows_errors("Previewing augmentations"):
        image, mask = w.load_sample(manifest["id"], samples[int(number) - 1]["key"])
        outputs = preview(image, mask, names, params, n=4, seed=seed)
        pictures = [w.with_mask(image, mask)] + [w.with_mask(img, m) for img, m in outputs]
        w.image_grid(pictures, ["original"] + [f"augmented {i + 1}" for i in range(len(outputs))], columns=5)
        if mask is not None:
            st.caption("Geometric augmentations move the mask with the image; intensity ones leave it alone.")


st.title("Data")
ACTOR = auth.page_actor()
tabs = st.tabs(SECTIONS, key="data_section", on_change="rerun")
for tab, draw in zip(tabs, (bring_data, explore, dicom_viewer, augmentation_preview)):
    with tab:
        if tab.open:        # only the visible section runs
            draw()
