"""Train: set up a run (data, architecture, transfer learning, augmentation, optimisation) and queue it.

Every widget comes from the run-settings table through pages/_settings.py; this page only arranges them and
supplies the choices that depend on the dataset (architectures, losses, metrics, augmentations)."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

import streamlit as st

from engine.accounts import access
from engine.classroom.assignments import preset_limits
from engine.config import SCHEDULE_TITLES, RunConfig
from engine.data.folds import group_count
from engine.data.manifest import list_datasets, load_manifest
from engine.errors import UserError
from engine.models import DEFAULT_ARCH, get_spec, models_for, parameter_count
from engine.models.weights import imagenet_status
from engine.preflight import split_warnings
from engine.presets import BUDGETS, Preset, apply_preset, auto_settings
from engine.runs import crossval, submit
from engine.tasks import METRIC_TITLES, default_loss, headline_metric, monitor_choices
from engine.training.augment import AUGMENTATIONS
from engine.training.losses import losses_for
from pages import _auth as auth
from pages import _curve as learning_curve
from pages import _start_from as start_from
from pages import _settings as s
from pages import _widgets as w

FORM = "train"
FEW_GROUPS = 20           # fewer patients than this: suggest cross-validation
SCHEDULE_NOTES = {"constant": "The learning rate stays the same for the whole run.",
                  "cosine": "Falls smoothly from the chosen rate to zero along half a cosine wave.",
                  "onecycle": "Warms up to the chosen rate, then anneals far below it (Smith, 2018)."}


def architecture(manifest: dict) -> tuple[str, dict]:
    """The chosen architecture and its options, with what it is known for and how big it is."""
    task = manifest["task"]
    specs = {spec.name: spec for spec in models_for(task)}
    arch = s.widget("arch", FORM, value=DEFAULT_ARCH[task], context=task, options=list(specs),
                    titles=lambda n: f"{specs[n].title} ({specs[n].year})" if specs[n].year else specs[n].title)
    spec = specs[arch]
    st.info(spec.note, icon=":material/school:")
    options = {}
    if spec.options:
        with st.expander(f"{spec.title} settings"):
            options = {opt.name: option_widget(arch, opt) for opt in spec.options}
    cols = st.columns(3)
    with w.shows_errors("Counting parameters"):
        count = parameter_count(arch, manifest["channels"], manifest["num_classes"], options, task=task)
        cols[0].metric("Parameters", w.millions(count))
    cols[1].metric("Smallest image", f"{spec.min_size} px")
    status = imagenet_status(spec, options)
    cols[2].metric("ImageNet weights here", "yes" if status.available else "missing" if status.exists else "none",
                   help="Whether this architecture's ImageNet weight file is in the local torch cache.")
    return arch, options


def option_widget(arch: str, opt):
    """A model option (e.g. U-Net depth). Out-of-range values are refused with a sentence, never kept quietly."""
    key = s.key_for(FORM, "model_options", f"{arch}_{opt.name}")
    if opt.kind == "bool":
        return st.checkbox(opt.label, value=opt.default, help=opt.help or None, key=key)
    if opt.kind == "int":
        value = st.number_input(opt.label, value=opt.default, step=1, help=opt.help or None, key=key)
        return int(value)       # the range is checked with the whole config below, and explained there
    return st.selectbox(opt.label, list(opt.choices), index=list(opt.choices).index(opt.default),
                        help=opt.help or None, key=key)


def transfer_learning(arch: str, options: dict, task: str) -> tuple[str, bool, str | None]:
    """(pretrained, freeze_backbone, problem): where the weights start from and which layers learn."""
    spec = get_spec(arch, task)
    status = imagenet_status(spec, options)
    starts = {"none": "From scratch (random weights)"}
    if spec.pretrained:
        starts["imagenet"] = "ImageNet weights" + ("" if status.available else " (not on this machine)")
    starts |= start_from.starts(ACTOR, task, arch)      # your finished runs, pre-trained encoders
    starts["file"] = "Upload a weights file"
    start = s.widget("pretrained", FORM, value="none", context=arch, options=list(starts), titles=starts,
                     radio=True)
    if start == "none":
        return "none", False, None
    freeze = s.widget("freeze_backbone", FORM)
    if start in start_from.KINDS:
        value, problem = start_from.choose(start, ACTOR, task, arch)
        return value, freeze, problem
    if start == "imagenet":
        if not status.available:
            return "imagenet", freeze, status.message
        st.caption(f"ImageNet weights from the local torch cache ({w.as_text(status.path.name)}); grayscale images "
                   "reuse them by summing the first layer's colour filters.")
        return "imagenet", freeze, None
    upload = st.file_uploader("Weights file (a PyTorch state dict, .pt or .pth)", type=["pt", "pth"],
                              key="train_weights")
    if upload is None:
        return "none", freeze, "Upload a weights file, or start from scratch."
    path = w.spool_one(upload, "weights")    # the run reads it later, from the worker
    st.caption(f"Using {w.as_text(w.short_name(upload.name))}.")
    return str(path), freeze, None


def augmentations() -> tuple[list[str], dict]:
    names = s.widget_multiselect("augment", FORM, list(AUGMENTATIONS), lambda n: AUGMENTATIONS[n].title)
    if not names:
        return [], {}
    with st.expander("Augmentation settings (preview them on the Data page)"):
        return names, w.augmentation_sliders(names, s.key_for(FORM, "augment_params", "aug"))


def optimisation(task: str) -> dict:
    """Loss, optimizer, learning rate and schedule, as RunConfig fields."""
    out: dict = {}
    left, middle, right = st.columns(3)
    with left:
        specs = {spec.name: spec for spec in losses_for(task)}
        out["loss"] = s.widget("loss", FORM, value=default_loss(task), context=task, options=list(specs),
                               titles=lambda n: specs[n].title)
        st.caption(specs[out["loss"]].note)
        out["class_weights"] = s.widget("class_weights", FORM)
    with middle:
        for name in ("optimizer", "lr", "momentum", "weight_decay"):
            if s.is_shown(s.BY_NAME[name], out):
                out[name] = s.widget(name, FORM)
    with right:
        out["schedule"] = s.widget("schedule", FORM)
        for name in ("decay_rate", "decay_steps", "step_size", "gamma"):
            if s.is_shown(s.BY_NAME[name], out):
                out[name] = s.widget(name, FORM)
        if out["schedule"] in SCHEDULE_NOTES:
            st.caption(SCHEDULE_NOTES[out["schedule"]] + f" ({SCHEDULE_TITLES[out['schedule']]})")
    return out


def length_and_hardware(arch: str, task: str, headline: str) -> dict:
    spec = get_spec(arch, task)
    out: dict = {}
    cols = st.columns(5)
    out["epochs"] = s.widget("epochs", FORM, where=cols[0])
    out["batch_size"] = s.widget("batch_size", FORM, where=cols[1])
    out["image_size"] = s.widget("image_size", FORM, value=spec.default_size, context=arch, where=cols[2])
    out["early_stopping"] = s.widget("early_stopping", FORM, where=cols[3])
    out["time_limit_minutes"] = s.widget("time_limit_minutes", FORM, where=cols[4])
    cols = st.columns(4)
    out["monitor"] = s.widget("monitor", FORM, value=headline, context=task, where=cols[0],
                              options=monitor_choices(task), titles=lambda m: f"validation {METRIC_TITLES[m]}")
    out["device"] = s.widget("device", FORM, where=cols[1])
    out["seed"] = s.widget("seed", FORM, where=cols[2])
    out["amp"] = s.widget("amp", FORM, where=cols[3])
    with st.expander("More"):
        out["preview_samples"] = s.widget("preview_samples", FORM)
        out["devices"] = s.widget("devices", FORM)     # N GPUs, or N CPU processes (for testing)
    return out


AUTO = "train_auto_preset"      # session key: the last Auto preset, and the dataset it was chosen for


def fill_with_auto(dataset_id: str, budget: int, actor) -> None:
    """The Auto button's callback: choose the preset and put its values into the form's widgets (before they are
    drawn, so the user sees them and can still change any of them)."""
    state = st.session_state
    full = load_manifest(dataset_id)
    try:
        with st.spinner("Timing a few training steps on this device to choose the settings…"):
            preset = auto_settings(full, device=state.get(s.key_for(FORM, "device"), "auto"), budget_minutes=budget,
                                   limits=preset_limits(actor, dataset_id))
    except UserError as err:
        state[AUTO] = {"dataset_id": dataset_id, "error": str(err)}
        return
    v, task, arch = preset.values, full["task"], preset.values["arch"]
    state[s.key_for(FORM, "arch", task)] = arch
    state[s.key_for(FORM, "pretrained", arch)] = v["pretrained"]
    for option, value in v.get("model_options", {}).items():
        state[s.key_for(FORM, "model_options", f"{arch}_{option}")] = value
    state[s.key_for(FORM, "augment")] = list(v["augment"])
    for name, params in v["augment_params"].items():
        for param, value in params.items():
            state[f"{s.key_for(FORM, 'augment_params', 'aug')}_{name}_{param}"] = float(value)
    state[s.key_for(FORM, "loss", task)] = v["loss"]
    state[s.key_for(FORM, "monitor", task)] = v["monitor"]
    state[s.key_for(FORM, "image_size", arch)] = v["image_size"]
    for name in ("class_weights", "optimizer", "lr", "schedule", "epochs", "batch_size", "early_stopping",
                 "time_limit_minutes"):
        state[s.key_for(FORM, name)] = v[name]
    state[AUTO] = {"dataset_id": dataset_id, "record": preset.record()}


def auto_button(manifest: dict):
    """One "Auto" button with a time budget; returns the place where its explanations are drawn later."""
    with st.container(border=True):
        cols = st.columns([3, 1])
        budget = cols[0].radio("Auto: settings chosen from this dataset's fingerprint, within about", BUDGETS,
                               index=1, format_func=lambda m: f"{m} minutes", horizontal=True, key="train_auto_budget",
                               help="Measures a few training steps on this device, then chooses the architecture, "
                                    "image size, epochs, augmentation, loss and schedule. You can change any of "
                                    "them afterwards.")
        cols[1].button("Auto", key="train_auto", icon=":material/auto_awesome:", on_click=fill_with_auto,
                       args=(manifest["id"], budget, ACTOR))
        return st.container()


def preset_setting(place, manifest: dict, config: RunConfig) -> dict:
    """The run's `preset` (the Auto preset with the settings changed since), shown read-only with its reasons."""
    saved = st.session_state.get(AUTO) or {}
    record = saved.get("record") if saved.get("dataset_id") == manifest["id"] else None
    with place:
        if saved.get("error") and saved.get("dataset_id") == manifest["id"]:
            st.error(w.as_text(saved["error"]))
        if record is None:
            st.session_state[s.key_for(FORM, "preset")] = "none"
            st.text_input(s.BY_NAME["preset"].label, key=s.key_for(FORM, "preset"), disabled=True,
                          help=s.help_text(s.BY_NAME["preset"]))
            return {}
        current = config.to_dict()
        changed = {k: current[k] for k, v in record["values"].items() if not _same(current[k], v)}
        preset = Preset(record["name"], record["budget_minutes"], record["values"], record["reasons"],
                        record["probe"])
        final = apply_preset(changed, preset)["preset"]
        mine = f", {len(changed)} changed by you" if changed else ""
        st.session_state[s.key_for(FORM, "preset")] = f"Auto (about {record['budget_minutes']:g} minutes{mine})"
        st.text_input(s.BY_NAME["preset"].label, key=s.key_for(FORM, "preset"), disabled=True,
                      help=s.help_text(s.BY_NAME["preset"]))
        with st.expander("Why these settings (Auto)", expanded=True):
            for name, reason in record["reasons"].items():
                note = " *(changed by you since)*" if name in changed else ""
                st.markdown(f"- **{w.as_text(s.BY_NAME[name].label)}**: {w.as_text(reason)}{note}")
        return final


def _same(current, chosen) -> bool:
    """Dict settings (model options, augmentation strengths) hold more keys than the preset set: compare its own."""
    if isinstance(chosen, dict) and isinstance(current, dict):
        return all(_same(current.get(k), v) for k, v in chosen.items())
    return current == chosen


def cross_validation(full: dict) -> dict:
    """K-fold cross-validation by patient: suggested when there are few groups (one split is then a lottery)."""
    groups = group_count(full)
    cols = st.columns([1, 1, 2])
    folds = s.widget("folds", FORM, where=cols[0])
    s.widget("fold", FORM, where=cols[1], disabled=True)        # set per run when the folds are queued
    if folds >= 2:
        cols[2].caption(f"Queues {folds} runs; each validates on about 1/{folds} of the {groups} patients "
                        "(groups) and trains on the rest. Compare shows the mean ± sd. No fold's model is the "
                        "final one: train one ordinary run with these settings for that.")
    elif groups < FEW_GROUPS:
        cols[2].caption(f"Only {groups} patients (groups) outside the test split: one validation split is a "
                        "lottery here. Consider 5-fold cross-validation.")
    return {"folds": folds}


def class_counts(full: dict) -> dict:
    """Training images per class (classification), for the headline score: balanced accuracy when imbalanced."""
    return Counter(sample.get("label") for sample in full["samples"] if sample["split"] == "train")


def batch_note(manifest: dict, batch_size: int) -> None:
    """Say what a batch size means for this dataset: the training split may be smaller than one batch."""
    train = (manifest.get("split_counts") or {}).get("train", 0)
    if train and batch_size > train:
        st.warning(f"The batch size ({batch_size}) is larger than the training split ({train} images): every "
                   f"step sees all {train} images, one step per epoch. Lower it to {max(2, train // 4)} or so "
                   "for more steps per epoch.", icon=":material/info:")
    elif train:
        st.caption(f"{math.ceil(train / batch_size)} optimizer steps per epoch ({train} training images).")


def launch(config: RunConfig, problem: str | None) -> None:
    if problem:
        st.error(w.as_text(problem))          # the engine's sentence, which may quote a file name
    left, right, third, _ = st.columns([1, 1, 1, 2])
    start = left.button("Start training", type="primary", disabled=bool(problem), key="train_start")
    queue = right.button("Add to queue", disabled=bool(problem), key="train_queue",
                         help="Queue this run and stay here to set up another one.")
    learning_curve.curve_button(third, config, problem, ACTOR)
    if start or queue:
        with w.shows_errors("Queueing the run"):
            if config.folds >= 2:
                _, run_ids = crossval.create_folds(config, config.folds, **auth.acting(ACTOR))
                run_id, what = run_ids[0], f"{len(run_ids)} cross-validation runs ({', '.join(run_ids)})"
            else:
                run_id = submit.submit(config, **auth.acting(ACTOR))
                what = f"run `{run_id}`"
            if start:
                w.open_run(run_id)
            else:
                st.success(f"Queued {what}. Set up another one, or follow it on the Monitor page.")


st.title("Train")
ACTOR = auth.page_actor()
datasets = [d for d in list_datasets() if access.can_see_dataset(ACTOR, d)]
if not datasets:
    st.info("There is no dataset yet. Upload images on the **Data** page, or start from a demo on **Home**.")
    st.stop()
manifest = w.pick_dataset(datasets, key=s.key_for(FORM, "dataset_id"))
task = manifest["task"]
cols = st.columns([1, 3])
s.widget("task", FORM, value=task, where=cols[0], disabled=True)       # fixed by the dataset; shown, not chosen
cols[1].caption(f"{manifest['channels']} channel(s) · classes: {w.as_text(', '.join(manifest['classes']))}")
full = load_manifest(manifest["id"])          # with the samples, which the listing omits; read once per rerun
for warning in split_warnings(full):           # before anything is set up: small splits make scores shaky
    st.warning(w.as_text(warning["message"]), icon=":material/warning:")

auto_place = auto_button(manifest)
st.subheader("Model")
arch, model_options = architecture(manifest)
pretrained, freeze, problem = transfer_learning(arch, model_options, task)
st.subheader("Augmentation")
augment, augment_params = augmentations()
st.subheader("Optimisation")
choices = optimisation(task)
st.subheader("Length and hardware")
choices |= length_and_hardware(arch, task, headline_metric(task, class_counts(full)))
batch_note(manifest, choices["batch_size"])
st.subheader("Validation")
choices |= cross_validation(full)
choices["train_fraction"] = s.widget("train_fraction", FORM)
name = s.widget("name", FORM, placeholder="e.g. baseline, more augmentation")

config = RunConfig(dataset_id=manifest["id"], arch=arch, task=task, name=name.strip(), pretrained=pretrained,
                   freeze_backbone=freeze, model_options=model_options, augment=augment,
                   augment_params=augment_params, **choices)
config.preset = preset_setting(auto_place, manifest, config)
if problem is None:
    try:
        w.check_config(replace(config, fold=1) if config.folds >= 2 else config)   # fold 1 stands for all folds
    except UserError as err:
        problem = str(err)
launch(config, problem)
