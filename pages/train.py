"""Train: set up a run (data, architecture, transfer learning, augmentation, optimisation) and queue it."""
from __future__ import annotations

import streamlit as st

from engine import jobs
from engine.augment import AUGMENTATIONS
from engine.config import OPTIMIZERS, SCHEDULES, RunConfig, default_loss, default_monitor
from engine.data.dataset import list_datasets
from engine.errors import UserError
from engine.losses import losses_for
from engine.models import DEFAULT_ARCH, get_spec, models_for, parameter_count
from pages import _widgets as w

LEARNING_RATES = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]   # steps of about ×3: a log scale
OPTIMIZER_TITLES = {"adam": "Adam", "adamw": "AdamW (decoupled weight decay)", "sgd": "SGD with momentum"}
SCHEDULE_TITLES = {"constant": "Constant", "exponential": "Exponential decay", "step": "Step decay",
                   "cosine": "Cosine annealing", "onecycle": "One-cycle"}
SCHEDULE_NOTES = {"constant": "The learning rate stays the same for the whole run.",
                  "cosine": "Falls smoothly from the chosen rate to zero along half a cosine wave.",
                  "onecycle": "Warms up to the chosen rate, then anneals far below it (Smith, 2018)."}
DEVICE_TITLES = {"auto": "Automatic (GPU when there is one)", "cpu": "CPU", "cuda": "GPU (CUDA)"}


def architecture(manifest: dict) -> tuple[str, dict]:
    """The chosen architecture and its options, with what it is known for and how big it is."""
    task = manifest["task"]
    specs = {s.name: s for s in models_for(task)}
    names = list(specs)
    arch = st.selectbox("Architecture", names, index=names.index(DEFAULT_ARCH[task]), key=f"train_arch_{task}",
                        format_func=lambda n: f"{specs[n].title} ({specs[n].year})" if specs[n].year
                        else specs[n].title)
    spec = specs[arch]
    st.info(spec.note, icon=":material/school:")
    options = {}
    if spec.options:
        with st.expander(f"{spec.title} settings"):
            options = {opt.name: option_widget(arch, opt) for opt in spec.options}
    cols = st.columns(3)
    with w.shows_errors("Counting parameters"):
        count = parameter_count(arch, manifest["channels"], manifest["num_classes"], options)
        cols[0].metric("Parameters", w.millions(count))
    cols[1].metric("Smallest image", f"{spec.min_size} px")
    cols[2].metric("ImageNet weights", "available" if spec.pretrained else "none")
    return arch, options


def option_widget(arch: str, opt):
    key = f"train_opt_{arch}_{opt.name}"
    if opt.kind == "bool":
        return st.checkbox(opt.label, value=opt.default, help=opt.help or None, key=key)
    if opt.kind == "int":
        return int(st.number_input(opt.label, min_value=opt.min, max_value=opt.max, value=opt.default, step=1,
                                   help=opt.help or None, key=key))
    return st.selectbox(opt.label, list(opt.choices), index=list(opt.choices).index(opt.default),
                        help=opt.help or None, key=key)


def transfer_learning(arch: str) -> tuple[str, bool, str | None]:
    """(pretrained, freeze_backbone, problem): where the weights start from and which layers learn."""
    spec = get_spec(arch)
    starts = {"none": "From scratch (random weights)"}
    if spec.pretrained:
        starts["imagenet"] = "ImageNet weights"
    starts["file"] = "Upload a weights file"
    start = st.radio("Start from", list(starts), format_func=starts.get, horizontal=True, key=f"train_start_{arch}")
    if start == "none":
        return "none", False, None
    freeze = st.radio("Which layers learn", ("all", "head"), horizontal=True, key="train_freeze",
                      format_func=lambda v: {"all": "Fine-tune all layers",
                                             "head": "Freeze the backbone, train only the head"}[v]) == "head"
    if start == "imagenet":
        st.caption("ImageNet weights come from the local torch cache; grayscale images reuse them by summing "
                   "the first layer's colour filters.")
        return "imagenet", freeze, None
    upload = st.file_uploader("Weights file (a PyTorch state dict, .pt or .pth)", type=["pt", "pth"],
                              key="train_weights")
    if upload is None:
        return "none", freeze, "Upload a weights file, or start from scratch."
    path = w.spool_one(upload, "weights")    # the run reads it later, from the worker
    st.caption(f"Using {w.short_name(upload.name)}.")
    return str(path), freeze, None


def augmentations() -> tuple[list[str], dict]:
    names = st.multiselect("Augmentations (applied to training images only, jointly to image and mask)",
                           list(AUGMENTATIONS), key="train_augment", format_func=lambda n: AUGMENTATIONS[n].title)
    if not names:
        return [], {}
    with st.expander("Augmentation settings (preview them on the Data page)"):
        return names, w.augmentation_sliders(names, "train_aug")


def optimisation(task: str) -> dict:
    """Loss, optimizer, learning rate and schedule, as RunConfig fields."""
    out: dict = {}
    left, middle, right = st.columns(3)
    with left:
        specs = {s.name: s for s in losses_for(task)}
        names = list(specs)
        out["loss"] = st.selectbox("Loss", names, index=names.index(default_loss(task)) if default_loss(task) in names
                                   else 0, format_func=lambda n: specs[n].title, key=f"train_loss_{task}")
        st.caption(specs[out["loss"]].note)
        out["class_weights"] = st.checkbox("Weight classes by rarity", key="train_class_weights",
                                           help="Rare classes count more in the loss; helps with imbalanced data.")
    with middle:
        out["optimizer"] = st.selectbox("Optimizer", OPTIMIZERS, format_func=OPTIMIZER_TITLES.get,
                                        key="train_optimizer")
        out["lr"] = st.select_slider("Learning rate", LEARNING_RATES, value=1e-3, format_func=lambda v: f"{v:g}",
                                     key="train_lr", help="Each step is about ×3. 0.001 suits Adam; SGD often "
                                                          "wants 0.01–0.1.")
        if out["optimizer"] == "sgd":
            out["momentum"] = st.slider("Momentum", 0.0, 0.99, 0.9, 0.01, key="train_momentum")
        out["weight_decay"] = st.select_slider("Weight decay", [0.0, 1e-5, 1e-4, 1e-3, 1e-2, 5e-2], value=0.0,
                                               format_func=lambda v: f"{v:g}", key="train_weight_decay")
    with right:
        out["schedule"] = st.selectbox("Learning-rate schedule", SCHEDULES, format_func=SCHEDULE_TITLES.get,
                                       key="train_schedule")
        if out["schedule"] == "exponential":
            out["decay_rate"] = st.slider("Decay rate", 0.5, 0.999, 0.9, 0.001, key="train_decay_rate",
                                          help="The rate is multiplied by this every 'decay steps' optimizer steps.")
            out["decay_steps"] = int(st.number_input("Decay steps", 1, 100_000, 100, key="train_decay_steps"))
        elif out["schedule"] == "step":
            out["step_size"] = int(st.number_input("Epochs between drops", 1, 1000, 10, key="train_step_size"))
            out["gamma"] = st.slider("Factor per drop", 0.01, 0.99, 0.1, 0.01, key="train_gamma")
        else:
            st.caption(SCHEDULE_NOTES[out["schedule"]])
    return out


def length_and_hardware(arch: str, task: str) -> dict:
    spec = get_spec(arch)
    out: dict = {}
    cols = st.columns(4)
    out["epochs"] = int(cols[0].number_input("Epochs", 1, 1000, 10, key="train_epochs"))
    out["batch_size"] = int(cols[1].number_input("Batch size", 1, 1024, 16, key="train_batch"))
    out["image_size"] = int(cols[2].number_input("Image size (px)", 16, 1024, spec.default_size, step=8,
                                                 key=f"train_size_{arch}",
                                                 help="Images are resized to a square of this side."))
    out["early_stopping"] = int(cols[3].number_input("Early stopping patience (epochs, 0 = off)", 0, 1000, 0,
                                                     key="train_patience"))
    cols = st.columns(4)
    monitors = [*w.TASK_METRICS[task], "loss"]
    out["monitor"] = cols[0].selectbox("Best epoch by", monitors, index=monitors.index(default_monitor(task)),
                                       format_func=lambda m: f"validation {w.METRIC_TITLES[m]}",
                                       key=f"train_monitor_{task}")
    out["device"] = cols[1].selectbox("Device", ("auto", "cpu", "cuda"), format_func=DEVICE_TITLES.get,
                                      key="train_device")
    out["seed"] = int(cols[2].number_input("Random seed", 0, 2**31 - 1, 0, key="train_seed",
                                           help="The same seed and settings give the same run."))
    out["amp"] = cols[3].checkbox("Mixed precision on GPU", value=True, key="train_amp")
    return out


def launch(config: RunConfig, problem: str | None) -> None:
    if problem:
        st.error(problem)
    left, right, _ = st.columns([1, 1, 3])
    start = left.button("Start training", type="primary", disabled=bool(problem), key="train_start")
    queue = right.button("Add to queue", disabled=bool(problem), key="train_queue",
                         help="Queue this run and stay here to set up another one.")
    if start or queue:
        with w.shows_errors("Queueing the run"):
            run_id = jobs.submit(config)
            if start:
                w.open_run(run_id)
            else:
                st.success(f"Queued run `{run_id}`. Set up another one, or follow it on the Monitor page.")


st.title("Train")
datasets = list_datasets()
if not datasets:
    st.info("There is no dataset yet. Upload images on the **Data** page, or start from a demo on **Home**.")
    st.stop()
manifest = w.pick_dataset(datasets, key="train_dataset")
task = manifest["task"]
st.caption(f"Task: **{task}** (from the dataset) · {manifest['channels']} channel(s) · "
           f"classes: {', '.join(manifest['classes'])}")

st.subheader("Model")
arch, model_options = architecture(manifest)
pretrained, freeze, problem = transfer_learning(arch)
st.subheader("Augmentation")
augment, augment_params = augmentations()
st.subheader("Optimisation")
choices = optimisation(task)
st.subheader("Length and hardware")
choices |= length_and_hardware(arch, task)
name = st.text_input("Run name (optional)", key="train_name", placeholder="e.g. baseline, more augmentation")

config = RunConfig(dataset_id=manifest["id"], arch=arch, task=task, name=name.strip(), pretrained=pretrained,
                   freeze_backbone=freeze, model_options=model_options, augment=augment,
                   augment_params=augment_params, **choices)
if problem is None:
    try:
        w.check_config(config)
    except UserError as err:
        problem = str(err)
launch(config, problem)
