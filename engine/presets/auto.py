"""The Auto preset: training settings chosen from the dataset's fingerprint, the device and a time budget, each
with one sentence that says why (in the spirit of nnU-Net's rule-based configuration, small enough to read).

Epochs come from a short timing probe: a few real optimizer steps of the chosen network on this device."""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.data.fingerprint import fingerprint
from engine.errors import UserError
from engine.models import build_model, get_spec
from engine.models.weights import imagenet_status
from engine.tasks import IMBALANCE_RATIO
from engine.training.augment import build_pipeline

BUDGETS = (5, 15, 60)               # minutes the Train page offers ("about 5 / 15 / 60 minutes")
SIZES = (32, 48, 64, 96, 128, 160, 192, 256, 384, 512)
# Largest image side worth paying for, by budget (minutes) and device: a CPU at 128 px is already slow.
SIZE_CAP = {"cpu": ((5, 64), (15, 96), (60, 128), (math.inf, 192)),
            "cuda": ((5, 128), (15, 256), (60, 256), (math.inf, 384))}
MIN_STRUCTURE_PX = 6                # the smallest structure keeps at least this many pixels across
MAX_EPOCHS = 300                    # the most epochs the preset plans (and a re-plan may extend to)
MIN_EPOCHS = 8                      # fewer affordable passes than this: step the image size down ...
SEGMENTATION_FLOOR = 64             # ... but outlines keep at least this many pixels (Dice fell at 48 px)
ENOUGH_EPOCHS = 24                  # a segmentation steps its size up while at least this many epochs still fit
CLASSIFICATION_FLOOR = 128          # ... and a class decided by a small finding keeps it (benchmarks/auto.md)
AUGMENT_EPOCHS = 12                 # augmentation pays off only when the network sees the data many times
SMALL_DATA = 2000                   # training images below which augmentation is on
SMALL_FOREGROUND = 0.05             # foreground share below which the Dice part of the loss matters most
TIME_SHARE = 0.85                   # of the budget planned for training; the rest is start-up and validation
PROBE_STEPS = 3
PROBE_BATCH = 8                     # the probe times at most this batch and scales: it must not eat a short budget
# Geometric augmentation for small data, by task. Segmentation gains from rotations and zooms (benchmarks/auto.md).
# A class may be told apart by a finding a few pixels across, which the resampling of a rotation or zoom blurs: on
# the small-lesion set they cost 0.05-0.16 balanced accuracy, so classification gets shifts, which move whole pixels
# (torchvision rounds the offset) and keep every pixel's value.
GEOMETRY = {"segmentation": {"rotate": {"degrees": 10.0}, "zoom": {"amount": 0.1}},
            "classification": {"shift": {"fraction": 0.1}}}
GEOMETRY_REASON = {
    "segmentation": ("Small rotations (±10°) and zooms (±10 %) on: {n} training images are few, and the {epochs} "
                     "epochs would otherwise let the network memorise them."),
    "classification": ("Shifts of up to 10 % of the image on: {n} training images are few, and the {epochs} epochs "
                       "would otherwise let the network memorise them. No rotations or zooms: they resample the "
                       "image and blur a finding a few pixels across, which may be all that tells the classes "
                       "apart; a shift moves whole pixels and keeps each one's value.")}
SHORT_BUDGET = 15                   # minutes; up to this a CPU trains with batches of 8

# (settings, fingerprint) -> seconds per training step, or (that, seconds of augmentation per image)
StepTimer = Callable[[dict, dict], float | tuple[float, float]]


@dataclass
class Preset:
    """RunConfig values, and one sentence per value saying why it was chosen."""

    name: str
    budget_minutes: float
    values: dict[str, Any]
    reasons: dict[str, str]
    probe: dict[str, Any] = field(default_factory=dict)     # what was measured: seconds per step, at what size

    def record(self, overridden: list[str] | tuple = ()) -> dict:
        """What a run stores in RunConfig.preset: the preset, its reasons, and the settings the user changed."""
        return {"name": self.name, "budget_minutes": self.budget_minutes, "values": dict(self.values),
                "reasons": dict(self.reasons), "probe": dict(self.probe), "overridden": sorted(overridden)}


def apply_preset(given: dict[str, Any], preset: Preset) -> dict[str, Any]:
    """RunConfig keyword arguments: the preset's values under the ones given (explicit settings win). The run
    records the preset with the final value of each of its settings and the names of those the user changed."""
    values = dict(preset.values)
    if "arch" in given and given["arch"] != values.get("arch"):
        values.pop("model_options", None)          # a U-Net's depth means nothing to another architecture
    if "augment" in given:
        values.pop("augment_params", None)         # strengths of augmentations that may no longer be chosen
    merged = {**values, **given}
    overridden = [k for k in preset.values if k in given and given[k] != preset.values[k]]
    record = preset.record(overridden)
    record["values"] = {k: merged[k] for k in preset.values if k in merged}
    return {**merged, "preset": record}


def auto_settings(source: dict, device: str = "auto", budget_minutes: float = 15,
                  step_seconds: StepTimer | None = None, limits: dict | None = None) -> Preset:
    """The Auto preset for a dataset (its manifest, or its fingerprint) on `device` within `budget_minutes`.

    `step_seconds` replaces the timing probe (tests, or a caller that already measured)."""
    if not isinstance(budget_minutes, (int, float)) or not 1 <= budget_minutes <= 24 * 60:
        raise UserError(f"The time budget must be between 1 and 1440 minutes (24 hours), not {budget_minutes}.")
    fp = source if "version" in source and "intensity" in source else fingerprint(source)
    kind = _device_kind(device)
    values: dict[str, Any] = {"optimizer": "adam", "lr": 1e-3, "schedule": "cosine"}
    reasons: dict[str, str] = {}
    _model(fp, kind, values, reasons)
    _image_size(fp, kind, budget_minutes, values, reasons)
    _within_size_limit(fp, kind, limits, values, reasons)
    _batch(fp, kind, budget_minutes, values, reasons)
    timer = step_seconds or (lambda v, f: probe_step_seconds(v, f, device=kind))
    probe = _epochs(fp, kind, budget_minutes, values, reasons, timer, (limits or {}).get("max_image_size"))
    _augment(fp, budget_minutes, probe, values, reasons)
    _within_epoch_limit(limits, values, reasons)
    probe["most_epochs"] = min(MAX_EPOCHS, (limits or {}).get("max_epochs") or MAX_EPOCHS)   # for a re-plan
    _loss(fp, values, reasons)
    reasons["optimizer"] = "Adam adapts the step size per weight, so it needs no tuning to start well."
    reasons["lr"] = "0.001 is Adam's well-tried starting rate; the schedule lowers it as training goes on."
    reasons["schedule"] = ("Cosine annealing lowers the rate smoothly to zero by the last planned epoch, so the "
                           "final epochs polish instead of jumping around.")
    values["early_stopping"] = 0
    reasons["early_stopping"] = ("Off: the time limit ends the run, the best epoch is kept whatever comes after it, "
                                 "and with the cosine schedule the last, slow epochs are often the best — on a "
                                 "small validation set the score wanders, and stopping on it left most of the "
                                 "budget unused.")
    reasons["epochs"] += (" From its second epoch on, the run times its own epochs and re-plans their number "
                          "when the machine turns out faster or slower than the probe (a shared machine's speed "
                          "changes), so the budget is neither left unused nor cut short mid-schedule.")
    values["time_limit_minutes"] = float(budget_minutes)
    reasons["time_limit_minutes"] = (f"Training stops after the last epoch that fits in {budget_minutes:g} minutes, "
                                     "so a busy machine cannot stretch the budget (the epochs come from a timing "
                                     "probe, and a shared machine's speed changes).")
    return Preset("auto", budget_minutes, values, reasons, probe)


def _device_kind(device: str) -> str:
    if device in ("cuda", "cpu"):
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _train_count(fp: dict) -> int:
    return max(1, fp["split_counts"].get("train", fp["images"]))


def _model(fp: dict, kind: str, values: dict, reasons: dict) -> None:
    if fp["task"] == "segmentation":
        values["arch"], values["pretrained"] = "unet", "none"
        reasons["arch"] = ("U-Net: its skip connections keep fine detail, which is what outlines need, and it "
                           "trains well from few images.")
        reasons["pretrained"] = "U-Net has no ImageNet weights here, so it starts from random weights."
        return
    spec = get_spec("resnet18", "classification")
    status = imagenet_status(spec)
    values["arch"] = "resnet18"
    reasons["arch"] = ("ResNet-18: the smallest residual network here, quick on a CPU and strong on small "
                       "medical datasets.")
    if status.available:
        values["pretrained"] = "imagenet"
        reasons["pretrained"] = ("ImageNet weights are on this machine: starting from them needs fewer images "
                                 "and epochs than random weights.")
    else:
        values["pretrained"] = "none"
        reasons["pretrained"] = ("From scratch: ImageNet weights for ResNet-18 are not on this machine (copy "
                                 "them into the torch cache to start from them).")


def _needed_size(fp: dict) -> int:
    """The smallest square side that keeps the smallest structure at least MIN_STRUCTURE_PX across."""
    if fp["task"] != "segmentation" or not fp.get("object_px"):
        return 0
    stored = fp["size"]["stored_side"]["median"]
    return math.ceil(MIN_STRUCTURE_PX * stored / math.sqrt(fp["object_px"]))


def _image_size(fp: dict, kind: str, budget: float, values: dict, reasons: dict) -> None:
    stored = int(fp["size"]["stored_side"]["median"])
    cap = next(px for minutes, px in SIZE_CAP[kind] if budget <= minutes)
    native = max([s for s in SIZES if s <= stored] or [SIZES[0]])
    need = _needed_size(fp)
    afforded = cap
    if fp["task"] == "classification":
        cap = max(cap, CLASSIFICATION_FLOOR)
    size = min(cap, native)
    if need > size:
        size = min([s for s in SIZES if s >= need] or [SIZES[-1]])
        size = min(size, max(native, SIZES[0]))          # never above the stored size: upscaling adds nothing
    values["image_size"] = size
    why = [f"the images are about {stored} px"]
    if size < native:
        why.append(f"{cap} px is what a {budget:g}-minute budget usually affords on the {kind.upper()}")
    if need:
        side = math.sqrt(fp["object_px"]) * size / stored
        why.append(f"the smallest structure stays about {side:.0f} px across (at least {MIN_STRUCTURE_PX} needed)")
    if afforded < size:
        why.append(f"a {budget:g}-minute budget alone would give {afforded} px on the {kind.upper()}, but a class is "
                   f"never shrunk below {CLASSIFICATION_FLOOR} px: what decides a medical image's class is often "
                   "small (a nodule, a fracture line), and a smaller image erases it")
    reasons["image_size"] = f"{size} px: " + "; ".join(why) + "."
    _unet_shape(fp, kind, values, reasons)


def _unet_shape(fp: dict, kind: str, values: dict, reasons: dict) -> None:
    if fp["task"] != "segmentation":
        return
    size = values["image_size"]
    depth = 4 if size >= 96 else 3 if size >= 48 else 2
    base = 32 if kind == "cuda" else 16
    values["model_options"] = {"depth": depth, "base": base}
    reasons["model_options"] = (f"Depth {depth}: at {size} px, {depth - 1} halvings leave a "
                                f"{size // 2 ** (depth - 1)}-px map deep down, wide enough context without "
                                f"losing small parts; width {base} suits the {kind.upper()}.")


def _within_size_limit(fp: dict, kind: str, limits: dict | None, values: dict, reasons: dict) -> None:
    """An assignment's image-size limit (a student's run) caps the chosen size instead of refusing the run."""
    most = (limits or {}).get("max_image_size")
    if not most or values["image_size"] <= most:
        return
    values["image_size"] = max([s for s in SIZES if s <= most] or [most])
    reasons["image_size"] += (f" Capped at {values['image_size']} px: assignment '{limits.get('assignment')}' "
                              f"allows images up to {most} px.")
    _unet_shape(fp, kind, values, reasons)


def _within_epoch_limit(limits: dict | None, values: dict, reasons: dict) -> None:
    """An assignment's epoch limit caps the planned epochs (the run then ends early, inside the budget)."""
    most = (limits or {}).get("max_epochs")
    if not most or values["epochs"] <= most:
        return
    values["epochs"] = most
    reasons["epochs"] += f" Capped at {most}: assignment '{limits.get('assignment')}' allows no more epochs."


def _batch(fp: dict, kind: str, budget: float, values: dict, reasons: dict) -> None:
    n = _train_count(fp)
    # A CPU spends about the same time per image at any batch size: in a short budget, smaller steps buy more updates
    batch = 32 if kind == "cuda" else 8 if budget <= SHORT_BUDGET else 16
    batch = max(2, min(batch, n // 4))                  # at least about four steps per epoch
    values["batch_size"] = batch
    why = (f"on the CPU a {budget:g}-minute budget gets more updates from smaller steps" if kind == "cpu"
           and budget <= SHORT_BUDGET else "small enough for many updates, large enough for steady gradients")
    reasons["batch_size"] = (f"{batch} images per step: {math.ceil(n / batch)} steps per epoch over the {n} "
                             f"training images; {why}.")


def _epochs(fp: dict, kind: str, budget: float, values: dict, reasons: dict, timer: StepTimer,
            most_px: int | None = None) -> dict:
    """Epochs from the measured seconds per step; a size that leaves too few epochs is stepped down, and a
    segmentation that leaves many is stepped up (to at most `most_px`, an assignment's limit)."""
    seconds, augment_cost = _measure(timer, values, fp)
    if _affordable_epochs(fp, values, budget, seconds) < MIN_EPOCHS:
        # A short plan may be a burst of someone else's load on a shared CPU (benchmarks/auto.md): measure again
        seconds = min(seconds, _measure(timer, values, fp)[0])
    probe = {"seconds_per_step": seconds, "image_size": values["image_size"], "batch_size": values["batch_size"],
             "augment_seconds_per_image": augment_cost, "device": kind}
    stored = int(fp["size"]["stored_side"]["median"])
    least = min(SEGMENTATION_FLOOR if fp["task"] == "segmentation" else CLASSIFICATION_FLOOR, stored)
    floor = max(_needed_size(fp), least)
    while True:
        smaller = [s for s in SIZES if floor <= s < values["image_size"]]
        if _affordable_epochs(fp, values, budget, seconds) >= MIN_EPOCHS or not smaller:
            break
        new = smaller[-1]
        seconds = _resize(fp, kind, values, reasons, new, seconds)
        reasons["image_size"] += f" Stepped down to {new} px so that enough epochs fit in the budget."
    if fp["task"] == "segmentation":
        seconds = _step_up(fp, kind, budget, values, reasons, seconds, most_px)
    epochs = max(2, min(MAX_EPOCHS, _affordable_epochs(fp, values, budget, seconds)))
    values["epochs"] = epochs
    reasons["epochs"] = (f"{epochs} epochs fill about {budget:g} minutes: a timing probe of a few training steps "
                         f"on this {kind.upper()} puts one step of {probe['batch_size']} images at "
                         f"{probe['image_size']} px at {probe['seconds_per_step']:.2f} s.")
    return probe


def _resize(fp: dict, kind: str, values: dict, reasons: dict, new: int, seconds: float) -> float:
    """Train at `new` px: the seconds per step scale with the pixel count, the U-Net's shape with the size."""
    seconds *= (new / values["image_size"]) ** 2
    values["image_size"] = new
    _unet_shape(fp, kind, values, reasons)
    return seconds


def _step_up(fp: dict, kind: str, budget: float, values: dict, reasons: dict, seconds: float,
             most_px: int | None) -> float:
    """A segmentation trains at a larger size, up to the stored one, while ENOUGH_EPOCHS still fit: the size table
    is a guess at the device's speed, the probe measures it. Dice is scored on outlines at the stored size, and on
    the low-contrast set (benchmarks/auto.md) 128 px and 32 epochs scored 0.975 where 64 px and 151 epochs scored
    0.955: past a few dozen epochs, pixels buy more than passes."""
    stored = int(fp["size"]["stored_side"]["median"])
    top = min(stored, SIZE_CAP[kind][-1][1], most_px or math.inf)
    start = values["image_size"]
    for new in [s for s in SIZES if start < s <= top]:
        scaled = seconds * (new / values["image_size"]) ** 2
        if _affordable_epochs(fp, values, budget, scaled) < ENOUGH_EPOCHS:
            break
        seconds = _resize(fp, kind, values, reasons, new, seconds)
    if values["image_size"] > start:
        size = values["image_size"]
        reasons["image_size"] += (f" Stepped up to {size} px: the timing probe shows this {kind.upper()} still fits "
                                  f"at least {ENOUGH_EPOCHS} epochs at that size, and a finer image draws finer "
                                  "outlines, which is what Dice scores.")
    return seconds


def _measure(timer: StepTimer, values: dict, fp: dict) -> tuple[float, float]:
    measured = timer(values, fp)
    return measured if isinstance(measured, tuple) else (measured, 0.0)


def _affordable_epochs(fp: dict, values: dict, budget: float, step: float) -> int:
    """How many whole epochs fit in the planned share of `budget` minutes at `step` seconds per training step."""
    return int(TIME_SHARE * budget * 60 / _epoch_seconds(fp, values, step))


def _epoch_seconds(fp: dict, values: dict, step: float) -> float:
    """Training steps plus validation (a forward pass costs about a third of a training step)."""
    train_steps = math.ceil(_train_count(fp) / values["batch_size"])
    val = fp["split_counts"].get("val", 0)
    return max(1e-3, (train_steps + math.ceil(val / values["batch_size"]) / 3) * step * 1.1)


def _augment(fp: dict, budget: float, probe: dict, values: dict, reasons: dict) -> None:
    n, epochs = _train_count(fp), values["epochs"]
    step = probe["seconds_per_step"] * (values["image_size"] / probe["image_size"]) ** 2
    names: list[str] = []
    params: dict[str, dict] = {}
    if n < SMALL_DATA and epochs >= AUGMENT_EPOCHS:
        names += list(GEOMETRY[fp["task"]])
        params |= {name: dict(strengths) for name, strengths in GEOMETRY[fp["task"]].items()}   # the run's own copy
        geometry = GEOMETRY_REASON[fp["task"]].format(n=n, epochs=epochs)
    elif n < SMALL_DATA:
        geometry = (f"No geometric augmentation: the budget allows only {epochs} epochs, too few for it to pay "
                    "off; a longer budget turns it on.")
    else:
        geometry = f"No geometric augmentation: {n} training images give enough variety on their own."
    if fp["intensity"]["sources_differ"]:
        names += ["brightness", "contrast"]
        params |= {"brightness": {"amount": 0.2}, "contrast": {"amount": 0.2}}
        geometry += (f" Brightness and contrast jitter (±20 %) on: image brightness varies by "
                     f"{100 * fp['intensity']['image_mean_cv']:.0f} % between images, as when scanners or "
                     "exposures differ.")
    flips = ("No flips: the left and right of a body are not interchangeable (the heart lies on the left), so a "
             "mirrored image shows an anatomy patients do not have.")
    values["augment"], values["augment_params"] = names, params
    cost = probe.get("augment_seconds_per_image", 0.0) * (probe["image_size"] / values["image_size"]) ** -2
    if names and cost:          # augmenting costs time per image on the CPU: fewer epochs fit
        per_epoch = _epoch_seconds(fp, values, step) + 1.1 * n * cost
        values["epochs"] = max(2, min(MAX_EPOCHS, int(TIME_SHARE * budget * 60 / per_epoch)))
        reasons["epochs"] = (f"{values['epochs']}" + reasons["epochs"][len(str(epochs)):] +
                             f" Augmenting adds about {1000 * cost:.1f} ms per image, counted in.")
    reasons["augment"] = geometry + " " + flips
    strengths = ", ".join(f"{name} {value:g} {param}" for name, p in params.items() for param, value in p.items())
    reasons["augment_params"] = (f"Strengths kept mild ({strengths}): enough variety without images no scanner "
                                 "would produce." if params else "No augmentation, so no strengths to set.")


def _loss(fp: dict, values: dict, reasons: dict) -> None:
    imbalance = fp.get("imbalance", 1.0)
    if fp["task"] == "segmentation":
        share = sum(fp["foreground_share"].values())
        values["loss"] = "ce_dice"
        size = "small" if share < SMALL_FOREGROUND else "moderate"
        reasons["loss"] = (f"Cross-entropy + Dice: the structure covers {100 * share:.1f} % of the image "
                           f"({size}); the Dice part keeps it from being ignored, cross-entropy keeps gradients "
                           "steady.")
        values["class_weights"] = imbalance >= IMBALANCE_RATIO
        reasons["class_weights"] = (f"Class weights on: the largest structure class has {imbalance:.1f}× the "
                                    "pixels of the smallest." if values["class_weights"] else
                                    "No class weights: the Dice part already balances structure and background.")
        values["monitor"] = "dice"
        reasons["monitor"] = "The best epoch is the one with the highest validation Dice, the headline overlap score."
        return
    values["loss"] = "ce"
    reasons["loss"] = "Cross-entropy: the standard loss for choosing one class per image."
    imbalanced = imbalance >= IMBALANCE_RATIO
    values["class_weights"] = imbalanced
    values["monitor"] = "balanced_accuracy" if imbalanced else "accuracy"
    if imbalanced:
        reasons["class_weights"] = (f"Class weights on: the largest class has {imbalance:.1f}× the images of the "
                                    "smallest, and without weights the network learns to answer the common one.")
        reasons["monitor"] = ("The best epoch is picked by balanced accuracy: plain accuracy rewards answering the "
                              "common class.")
    else:
        reasons["class_weights"] = f"No class weights: the classes are balanced (ratio {imbalance:.1f})."
        reasons["monitor"] = "The best epoch is picked by validation accuracy; the classes are balanced."


def probe_step_seconds(values: dict, fp: dict, steps: int = PROBE_STEPS, device: str = "auto") -> tuple[float, float]:
    """(Seconds per training step, seconds of augmentation per image), from a few real steps of the chosen network
    on random images of the chosen size on the device that will train: the fastest step of a batch of up to
    PROBE_BATCH images, scaled to the chosen batch size; then one batch augmented as the task's small data is."""
    device = torch.device(_device_kind(device))
    classes = len(fp["classes"])
    model = build_model(values["arch"], fp["channels"], classes, task=fp["task"],
                        options=values.get("model_options") or None).to(device, memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    size, batch = values["image_size"], values["batch_size"]
    if device.type == "cpu":            # a GPU is not busier per image at a small batch: time the real one there
        batch = min(batch, PROBE_BATCH)
    images = torch.rand(batch, fp["channels"], size, size)
    if fp["task"] == "segmentation":
        targets = torch.randint(0, classes, (batch, size, size))
    else:
        targets = torch.randint(0, classes, (batch,))
    times = []
    x, y = images.to(device).contiguous(memory_format=torch.channels_last), targets.to(device)
    for i in range(steps + 1):                                  # the first step warms up allocators
        started = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - started)
    # The fastest step is the device's speed; on a shared machine the others include waits for the CPU (one
    # step of the same batch measured 0.9-7.6 s under load 8 on the 2-core dev box), which would plan too few epochs
    step = min(times) * values["batch_size"] / batch            # time grows with the images
    augment = build_pipeline(list(GEOMETRY[fp["task"]]), None)  # what small data gets: its cost per image
    started = time.perf_counter()
    augment.batch(images, targets if fp["task"] == "segmentation" else None)
    return step, (time.perf_counter() - started) / batch
