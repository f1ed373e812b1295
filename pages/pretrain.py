"""Pre-train page: upload images without labels, pre-train an architecture on them as an autoencoder (in a process
of its own, with a progress bar), and list the encoders a run on the Train page can start from."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.pretrain import jobs
from engine.pretrain.autoencoder import MODES, pretrainable_models
from engine.pretrain.library import PREFIX, list_encoders
from engine.pretrain.unlabeled import (
    STORED_SIZE,
    ingest_unlabeled_files,
    list_unlabeled,
)
from pages import _auth as auth
from pages import _widgets as w

INTRO = ("Labelled images are few and costly; images without labels are often plentiful. An **autoencoder** learns "
         "what your images look like by repairing them — removing added noise (*denoising*) or filling in hidden "
         "patches (*masked*) — with no labels at all. A run on the Train page can then start from those weights "
         "instead of random ones (*fine-tuning*), which helps most when the labelled set is small. It does not "
         "always help: compare against a run from scratch with the same settings.")
IMAGE_TYPES = ["png", "jpg", "jpeg", "tif", "tiff", "bmp", "dcm", "dicom", "zip"]
SIZES = (32, 64, 96, 128, 192, 256)
TICK_SECONDS = 2


def upload_section() -> None:
    st.subheader("1 · Upload images without labels")
    done = st.session_state.pop("pretrain_stored", None)
    if done:
        skipped = done["skipped"]
        st.success(f"Stored **{done['images']}** images as **{w.as_text(done['name'])}**"
                   + (f"; {skipped} file(s) skipped." if skipped else "."))
        if done["problems"]:
            with st.expander(f"Skipped files ({skipped})"):
                for item in done["problems"][:50]:
                    st.caption(w.as_text(item["message"]))
    turn = st.session_state.setdefault("pretrain_turn", 0)
    files = st.file_uploader("A ZIP, or image files (PNG, JPEG, TIFF, BMP, DICOM)", type=IMAGE_TYPES,
                             accept_multiple_files=True, key=f"pretrain_files_{turn}",
                             help="Labels are not needed; a masks/ folder in the upload is left out.")
    name = st.text_input("Name (optional)", key="pretrain_set_name", placeholder="e.g. Unlabeled cardiac slices")
    if st.button("Store the images", disabled=not files, key="pretrain_store"):
        with w.shows_errors("Reading the upload"):
            bar = st.progress(0.0, text="Reading images…")
            try:
                uploaded = [("/".join(w.safe_parts(f.name)), f.getbuffer()) for f in files]
                set_id = ingest_unlabeled_files(uploaded, name.strip() or None, **owned(),
                                                progress=lambda i, n: bar.progress(i / max(n, 1),
                                                                                   text=f"Read {i} of {n} files"))
            finally:
                bar.empty()
            stored = next(s for s in list_unlabeled(ACTOR) if s["id"] == set_id)
            st.session_state["pretrain_stored"] = stored
            st.session_state["pretrain_set"] = set_id
            st.session_state["pretrain_turn"] = turn + 1
            st.rerun()


def owned() -> dict:
    return {} if ACTOR is None else {"owner": ACTOR.name}


def pretrain_section() -> None:
    st.subheader("2 · Pre-train")
    sets = list_unlabeled(ACTOR)
    if not sets:
        st.info("Upload images without labels first (above).")
        return
    by_id = {s["id"]: s for s in sets}
    if st.session_state.get("pretrain_set") not in by_id:
        st.session_state["pretrain_set"] = sets[0]["id"]
    set_id = st.selectbox("Unlabeled images", list(by_id), key="pretrain_set",
                          format_func=lambda i: f"{by_id[i]['name']} · {by_id[i]['images']} images")
    specs = {spec.name: spec for spec in pretrainable_models()}
    left, right = st.columns(2)
    arch = left.selectbox("Architecture", list(specs), key="pretrain_arch",
                          format_func=lambda n: f"{specs[n].title} ({specs[n].task})")
    left.caption(w.as_text(specs[arch].note))
    mode = right.radio("Task to learn", list(MODES), key="pretrain_mode", horizontal=True,
                       format_func=str.capitalize)
    right.caption(MODES[mode])
    left, right = st.columns(2)
    epochs = left.number_input("Epochs", 1, 500, 10, key="pretrain_epochs")
    size = right.select_slider("Image size (px)", [s for s in SIZES if s >= specs[arch].min_size], value=128,
                               key="pretrain_size", help=f"Unlabeled images are stored at {STORED_SIZE} px; use "
                                                        "the size you will fine-tune at.")
    busy = _running()
    if st.button("Pre-train", type="primary", disabled=busy, key="pretrain_start"):
        with w.shows_errors("Starting pre-training"):
            st.session_state["pretrain_job"] = jobs.start(set_id, arch, mode, int(epochs), int(size), actor=ACTOR)
            st.rerun()
    if st.session_state.get("pretrain_job"):
        st.fragment(run_every=TICK_SECONDS if busy else None)(job_panel)()


def _running() -> bool:
    token = st.session_state.get("pretrain_job")
    return bool(token) and jobs.read_status(token).get("state") in ("starting", "running")


def job_panel() -> None:
    """Progress of the background pre-training, re-read from its status file on every tick."""
    status = jobs.read_status(st.session_state["pretrain_job"])
    state = status.get("state")
    if state in ("starting", "running"):
        epoch, epochs = int(status.get("epoch") or 0), int(status.get("epochs") or 1)
        loss = f" · reconstruction loss {status['loss']:.4f}" if status.get("loss") is not None else ""
        text = f"Epoch {epoch} of {epochs}{loss}" if state == "running" else "Starting (loading PyTorch)…"
        st.progress(epoch / max(epochs, 1), text=text)
        return
    if st.session_state.get("pretrain_ended") != st.session_state["pretrain_job"]:
        st.session_state["pretrain_ended"] = st.session_state["pretrain_job"]
        st.rerun(scope="app")          # once: the whole page shows the new encoder and enables the button again
    if state == "failed":
        st.error(w.as_text(status.get("message") or "Pre-training failed."))
    elif state == "done":
        st.success(f"Encoder **{w.as_text(status['encoder_id'])}** is ready: reconstruction loss "
                   f"{status['loss']:.4f} after {len(status['history'])} epochs (giving back the corrupted image "
                   f"unchanged scores {status['input_loss']:.4f}). Use it on the Train page (Start from).")
    if st.button("Clear", key="pretrain_clear"):
        st.session_state.pop("pretrain_job", None)
        st.rerun(scope="app")


def encoders_section() -> None:
    st.subheader("3 · Your pre-trained encoders")
    encoders = list_encoders(ACTOR)
    if not encoders:
        st.caption("None yet.")
        return
    st.dataframe(pd.DataFrame([{
        "name": e["name"], "architecture": e["arch"], "task learnt": e["mode"], "images": e["images"],
        "epochs": e["epochs"], "size (px)": e["image_size"], "reconstruction loss": e["loss"],
        "corrupted input's loss": e["input_loss"], "created": (e["created"] or "")[:16].replace("T", " "),
        "id": e["id"]} for e in encoders]), hide_index=True, key="pretrain_encoders")
    st.caption("Lower reconstruction loss than the corrupted input's means the network learnt something about "
               "your images; it does not promise better labelled results. To use one, open the **Train** page and "
               f"choose it under *Start from*; on the command line, `train --pretrained {PREFIX}ID` (same "
               "architecture and architecture settings).")


st.title("Pre-train")
ACTOR = auth.page_actor()
st.markdown(INTRO)
upload_section()
pretrain_section()
encoders_section()
