"""Home: what Lightbox is, and a built-in demo from zero to a running experiment in three clicks."""
from __future__ import annotations

import streamlit as st

from engine.config import RunConfig
from engine.data.demo import DEMOS, ensure_demo_dataset
from engine.models.registry import get_spec
from engine.runs import submit
from pages import _auth as auth
from pages import _widgets as w

# The demo buttons and the model each demo trains with its defaults.
DEMO_CHOICES = {
    "segmentation": ("Use the cardiac MRI demo", "unet", "U-Net"),
    "classification": ("Use the chest vs abdomen X-ray demo", "resnet18", "ResNet-18"),
}
DEMO_EPOCHS = 8


def demo_config(dataset_id: str, task: str) -> RunConfig:
    """Sensible, quick defaults for a first run on a demo dataset (a few minutes on a laptop CPU)."""
    _, arch, title = DEMO_CHOICES[task]
    spec = get_spec(arch)
    return RunConfig(dataset_id=dataset_id, arch=arch, task=task, name=f"Demo: {title}",
                     epochs=DEMO_EPOCHS, batch_size=16, lr=1e-3, image_size=spec.default_size,
                     augment=["hflip", "rotate"])


st.title("Lightbox")
ACTOR = auth.page_actor()
st.markdown(
    "A deep-learning lab for medical images that needs no code.  \n"
    "Bring a folder or ZIP of images (PNG, JPEG or DICOM), pick a classic architecture, and train it.  \n"
    "Watch the curves live, compare runs side by side, and try the model on new images.")
st.caption(w.DISCLAIMER)

st.subheader("From zero to a running experiment in three clicks")
st.markdown("**1. Pick a demo dataset.** It is synthetic and made on this computer, so nothing is downloaded.")
columns = st.columns(2)
for column, (task, (button, _, _)) in zip(columns, DEMO_CHOICES.items()):
    with column:
        st.markdown(f"**{DEMOS[task]['title']}** ({task})")
        st.caption(DEMOS[task]["description"])
        if st.button(button, key=f"demo_{task}", width="stretch"):
            with w.shows_errors("Preparing the demo"):
                with st.spinner("Making the demo images (only the first time)…"):
                    st.session_state["home_demo"] = (task, ensure_demo_dataset(task))
                    st.session_state["dataset_id"] = st.session_state["home_demo"][1]

chosen = st.session_state.get("home_demo")
st.markdown("**2. Train a model with sensible defaults.**")
if chosen is None:
    st.caption("Pick a demo above first.")
else:
    task, dataset_id = chosen
    _, arch, title = DEMO_CHOICES[task]
    st.success(f"Demo dataset ready: {DEMOS[task]['title']} (`{dataset_id}`).")
    st.caption(f"{title}, {DEMO_EPOCHS} epochs, Adam at learning rate 0.001, flips and small rotations. "
               "Change any of it later on the Train page.")
    if st.button(f"Train a {title} with defaults", type="primary", key="demo_train"):
        with w.shows_errors("Starting the demo run"):
            run_id = submit.submit(demo_config(dataset_id, task), **auth.acting(ACTOR))
            w.open_run(run_id)
st.markdown("**3. Watch it learn** on the Monitor page, which opens by itself.")

st.divider()
st.markdown("Your own images: **Data** to upload and inspect them, **Train** to set up a run, "
            "**Monitor** to follow it, **Compare** to rank runs.")
