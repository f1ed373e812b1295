"""Inference with a trained run: rebuild its best checkpoint, preprocess exactly like training, predict and score."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from engine.accounts import access
from engine.accounts.actor import Actor
from engine.config import RunConfig
from engine.data.dataset import cap_image, load_manifest, to_model_input
from engine.data.io import (
    SUPPORTED_EXTENSIONS,
    is_dicom,
    normalise_labels,
    read_image,
    read_mask_frames,
)
from engine.device import pick_device
from engine.errors import UserError
from engine.metrics import dice_per_class, iou_per_class
from engine.models.checkpoints import load_checkpoint, not_a_checkpoint
from engine.models.network import LightboxModel, build_network
from engine.runs import store
from engine.runs.paths import checkpoint_path, has_best_checkpoint
from engine.visualize.gradcam import explain_image
from engine.visualize.images import OVERLAY_ALPHA, compare_masks, overlay, to_rgb

READABLE = "PNG, JPEG, TIFF, BMP or DICOM"
MIN_SIDE = 16                      # the smallest image size a run can be trained at (RunConfig.validate)
TTA_FLIPS = {"hflip": (-1,), "vflip": (-2,)}


@dataclass
class Prediction:
    """What the model said about one image (one frame of a multi-frame DICOM)."""

    name: str
    frame: int
    task: str
    classes: list[str]
    image: np.ndarray                                   # float32 (C, H, W) in [0, 1], the original size
    probabilities: dict[str, float] = field(default_factory=dict)    # classification
    label: str = ""                                     # classification: the most probable class
    label_map: np.ndarray | None = None                 # segmentation: uint8 (H, W) class per pixel
    areas: dict[str, int] = field(default_factory=dict)              # segmentation: pixels per class
    scores: dict[str, float] = field(default_factory=dict)           # vs ground truth: dice_/iou_<class>, *_mean
    truth: np.ndarray | None = None                     # segmentation: the given mask, uint8 (H, W) class per pixel

    def rgb(self) -> np.ndarray:
        return to_rgb(torch.from_numpy(self.image))

    @property
    def overlay(self) -> np.ndarray | None:
        """Segmentation: uint8 (H, W, 3) mask over the image (drawn on demand: batches rarely need it)."""
        return None if self.label_map is None else self.blend(OVERLAY_ALPHA)

    def blend(self, alpha: float) -> np.ndarray:
        """The image with the predicted mask at a chosen opacity (the image itself for classification)."""
        return self.rgb() if self.label_map is None else overlay(self.rgb(), self.label_map, alpha)

    def compare(self, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
        """The predicted mask filled in colour and the given mask's border in green (just the blend without one)."""
        if self.label_map is None or self.truth is None:
            return self.blend(alpha)
        return compare_masks(self.rgb(), self.label_map, self.truth, alpha)

    @property
    def foreground_fraction(self) -> float:
        total = sum(self.areas.values())
        return 1.0 - self.areas.get(self.classes[0], 0) / total if total else 0.0

    def row(self) -> dict[str, object]:
        """A flat record for CSV and JSON output."""
        out: dict[str, object] = {"file": self.name, "frame": self.frame}
        if self.task == "classification":
            out["prediction"] = self.label
            out.update({f"prob_{c}": round(p, 6) for c, p in self.probabilities.items()})
        else:
            out["foreground_fraction"] = round(self.foreground_fraction, 6)
            out.update({f"area_{c}": a for c, a in self.areas.items()})
        out.update({k: round(v, 6) for k, v in self.scores.items()})
        return out


class Predictor:
    """A trained model in eval mode plus the preprocessing its dataset was cached with."""

    def __init__(self, model: LightboxModel, config: RunConfig, info: dict, device: torch.device,
                 run_id: str = "") -> None:
        self.model = model.eval().to(device, memory_format=torch.channels_last)
        for param in self.model.parameters():
            param.requires_grad_(False)         # inference only; Grad-CAM asks for input gradients instead
        self.config, self.info, self.device, self.run_id = config, info, device, run_id
        self._explaining = threading.Lock()     # cached predictors are shared by UI sessions; hooks are not
        self.task: str = info["task"]
        self.classes: list[str] = list(info["classes"])
        self.channels: int = int(info["channels"])
        self.size: int = int(config.image_size)

    # ---- reading and preprocessing -------------------------------------------------------------------
    def read(self, source: Path | bytes, name: str = "") -> list[np.ndarray]:
        """Decode a file the way ingest did (each DICOM's own window, as at ingest); one array per frame."""
        return read_frames(source, name)

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """(C, H, W) in [0, 1] → float32 (C, S, S): the very function that built the training cache."""
        check_image(image)
        # The steps of ingest (size cap, float16 storage) then of the cache (resize, float16): any image then gives
        # exactly the numbers training and evaluation saw (float16 keeps ~3 digits, far below 8-bit steps).
        half = cap_image(np.asarray(image, dtype=np.float32)).astype(np.float16)
        return torch.from_numpy(to_model_input(half, self.channels, self.size).astype(np.float16).astype(np.float32))

    # ---- model outputs -------------------------------------------------------------------------------
    @torch.inference_mode()
    def scores(self, batch: torch.Tensor, tta: bool | Sequence[str] = False) -> torch.Tensor:
        """Logits for a plain pass; mean softmax over the flips with TTA (segmentation outputs flipped back)."""
        x = batch.to(self.device).contiguous(memory_format=torch.channels_last)
        flips = tta_flips(tta)
        if not flips:
            return self.model(x).float()
        probs = []
        for dims in [()] + flips:
            out = self.model(x.flip(dims) if dims else x).float()
            if dims and out.dim() == 4:
                out = out.flip(dims)            # a mask predicted on a flipped image, flipped back into place
            probs.append(out.softmax(1))
        return torch.stack(probs).mean(0)

    def predict_array(self, image: np.ndarray, tta: bool | Sequence[str] = False, mask: object = None,
                      name: str = "image", frame: int = 0) -> Prediction:
        """Predict one (C, H, W) image in [0, 1]; a ground-truth mask (array, path or bytes) adds Dice/IoU."""
        return self.predict_arrays([image], tta, [mask], [name], [frame])[0]

    def predict_stored(self, image: np.ndarray, labels: np.ndarray | None, tta: bool | Sequence[str] = False,
                       name: str = "image") -> Prediction:
        """Predict a sample of an ingested dataset: its mask already holds class indices, so it is scored as it
        is (a ground truth from a file would first go through the dataset's grey-level mapping)."""
        return self._predict([image], tta, [labels], [name], [0])[0]

    def predict_arrays(self, images: list[np.ndarray], tta: bool | Sequence[str] = False,
                       masks: Sequence[object] | None = None, names: Sequence[str] | None = None,
                       frames: Sequence[int] | None = None) -> list[Prediction]:
        """Predict several images in one forward pass (the batch path used by ZIPs and the benchmark)."""
        names = names or [f"image {i + 1}" for i in range(len(images))]
        levels = self.info.get("mask_levels")
        truths = [None if m is None else read_mask_array(m, f"the mask for {n}", levels)[0]
                  for m, n in zip(masks or [None] * len(images), names)]
        return self._predict(images, tta, truths, names, frames or [0] * len(images))

    def _predict(self, images: list[np.ndarray], tta: bool | Sequence[str], masks: list[np.ndarray | None],
                 names: Sequence[str], frames: Sequence[int]) -> list[Prediction]:
        """Forward pass and results; `masks` are label maps already (class indices)."""
        if not images:
            return []
        batch = torch.stack([self.preprocess(image) for image in images])
        out = self.scores(batch, tta).cpu()
        results = []
        for i, image in enumerate(images):
            base = Prediction(names[i], frames[i], self.task, self.classes, np.asarray(image, dtype=np.float32))
            if self.task == "classification":
                results.append(self._classify(base, out[i], bool(tta_flips(tta))))
            else:
                results.append(self._segment(base, out[i], masks[i]))
        return results

    def predict_file(self, source: Path | bytes, name: str = "", tta: bool | Sequence[str] = False,
                     mask: object = None, mask_name: str = "") -> list[Prediction]:
        """Predict every frame of an image file; the mask (one frame, or one per frame) scores each frame."""
        label = name or (source.name if isinstance(source, Path) else "upload")
        frames = self.read(source, label)
        truths = ground_truth_frames(mask, mask_name or "the mask", len(frames), label,
                                     self.info.get("mask_levels"))
        return self._predict(frames, tta, truths, [label] * len(frames), list(range(len(frames))))

    def explain(self, image: np.ndarray, class_index: int | None = None, method: str = "gradcam"):
        """Grad-CAM (or "saliency") of one image at its original size, as engine.gradcam.CamResult."""
        if self.task != "classification":
            raise UserError("Grad-CAM explains classification models; for segmentation the predicted mask "
                            "already shows where the model found each class.")
        with self._explaining:
            return explain_image(self.model, self.preprocess(image), np.asarray(image, dtype=np.float32),
                                 class_index, self.device, method)

    # ---- turning outputs into answers ----------------------------------------------------------------
    def _classify(self, base: Prediction, out: torch.Tensor, averaged: bool) -> Prediction:
        probs = out if averaged else out.softmax(0)
        base.probabilities = {c: float(p) for c, p in zip(self.classes, probs)}
        base.label = self.classes[int(probs.argmax())]
        return base

    def _segment(self, base: Prediction, out: torch.Tensor, mask: np.ndarray | None) -> Prediction:
        h, w = base.image.shape[-2:]
        if out.shape[-2:] != (h, w):
            # Upsample the scores, not the labels: class boundaries land between model pixels, not on their grid.
            out = F.interpolate(out[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        # numpy's argmax over a short class axis is several times faster than torch's on the CPU
        labels = out.numpy().argmax(0).astype(np.uint8)
        counts = np.bincount(labels.ravel(), minlength=len(self.classes))
        base.label_map = labels
        base.areas = {c: int(n) for c, n in zip(self.classes, counts)}
        if mask is not None:
            base.truth = fit_mask(mask, (h, w), len(self.classes), base.name)
            base.scores = mask_scores(labels, base.truth, self.classes)
        return base


# ---- helpers ---------------------------------------------------------------------------------------------

def tta_flips(tta: bool | Sequence[str]) -> list[tuple[int, ...]]:
    """True means identity + horizontal flip; a list of names ("hflip", "vflip") chooses the flips."""
    if tta is True:
        return [TTA_FLIPS["hflip"]]
    if not tta:
        return []
    unknown = [t for t in tta if t not in TTA_FLIPS]
    if unknown:
        raise UserError(f"Unknown test-time augmentation {', '.join(unknown)}; use {' or '.join(TTA_FLIPS)}.")
    return [TTA_FLIPS[t] for t in tta]


def check_image(image: np.ndarray) -> None:
    if image.ndim != 3:
        raise UserError(f"An image must be a (channels, height, width) array, not shape {tuple(image.shape)}.")
    h, w = image.shape[-2:]
    if min(h, w) < MIN_SIDE:
        raise UserError(f"The image is only {w}×{h} pixels; Lightbox needs at least {MIN_SIDE} px on each side.")


def read_frames(source: Path | bytes, name: str = "") -> list[np.ndarray]:
    """engine.data.io.read_image with a plain message for files that are not images at all."""
    label = name or (source.name if isinstance(source, Path) else "upload")
    try:
        frames = read_image(source, label)
    except UserError as err:
        if Path(label).suffix.lower() not in SUPPORTED_EXTENSIONS and not is_dicom(source, label):
            raise UserError(f"{label} is not an image Lightbox can read ({READABLE}).") from err
        raise
    for frame in frames:
        h, w = frame.shape[-2:]
        if min(h, w) < MIN_SIDE:
            raise UserError(f"{label} is only {w}×{h} pixels; use images of at least {MIN_SIDE} px on each side.")
    return frames


def read_mask_array(mask: object, name: str, levels: dict | None = None) -> list[np.ndarray]:
    """A ground truth given as an array, a path or bytes → uint8 (H, W) label maps (0/255 becomes 0/1; `levels`
    maps grey-level masks the way the training dataset's masks were mapped)."""
    levels = {int(value): int(label) for value, label in (levels or {}).items()}
    if isinstance(mask, np.ndarray):
        return [normalise_labels(np.asarray(mask).astype(np.uint8), name, levels)]
    return [normalise_labels(m, name, levels) for m in read_mask_frames(mask, name)]


def ground_truth_frames(mask: object, name: str, frames: int, image_name: str,
                        levels: dict | None = None) -> list[np.ndarray | None]:
    if mask is None:
        return [None] * frames
    truths = read_mask_array(mask, name, levels)
    if len(truths) != frames:
        raise UserError(f"{name} holds {len(truths)} mask frame(s) but {image_name} has {frames}; "
                        "give one mask per frame.")
    return truths


def fit_mask(mask: np.ndarray, shape: tuple[int, int], num_classes: int, name: str) -> np.ndarray:
    """The mask at the image's size. Another resolution with the same proportions is resized (nearest);
    another shape is refused, since stretching it would score the model against the wrong pixels."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise UserError(f"The mask for {name} must be a single 2-D label image, not shape {mask.shape}.")
    h, w = shape
    mh, mw = mask.shape
    if (mh, mw) != (h, w):
        if abs(mw / mh - w / h) > 0.01 * (w / h):
            raise UserError(f"The mask for {name} is {mw}×{mh} pixels but the image is {w}×{h}; "
                            "use the mask drawn on this image.")
        resized = F.interpolate(torch.from_numpy(mask.astype(np.uint8))[None, None].float(), size=(h, w),
                                mode="nearest")
        mask = resized[0, 0].to(torch.uint8).numpy()
    if int(mask.max()) >= num_classes:
        raise UserError(f"The mask for {name} holds label {int(mask.max())}, but this model knows only "
                        f"{num_classes} classes (0–{num_classes - 1}).")
    return mask.astype(np.uint8)


def mask_scores(pred: np.ndarray, truth: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Dice and IoU per class and their means over the foreground classes, with engine.metrics."""
    out: dict[str, float] = {}
    for metric, fn in (("dice", dice_per_class), ("iou", iou_per_class)):
        values = [float(v) for v in fn(pred, truth, len(classes))]
        out.update({f"{metric}_{c}": v for c, v in zip(classes, values)})
        fg = values[1:] or values
        out[f"{metric}_mean"] = float(np.mean(fg))
    return out


# ---- loading ---------------------------------------------------------------------------------------------

def model_from_checkpoint(ckpt: dict) -> tuple[LightboxModel, RunConfig, dict]:
    """Rebuild the network of a checkpoint on the CPU; its weights and Normalize buffers come from the file."""
    config = RunConfig.from_dict(ckpt["config"])
    config.pretrained = "none"              # never fetch ImageNet weights at predict time: they are in the file
    info = ckpt["dataset"]
    channels = int(info["channels"])
    model = build_network(config, info, [0.0] * channels, [1.0] * channels)
    model.load_state_dict(ckpt["model"])
    return model.eval(), config, info


def load_run_model(run_id: str) -> tuple[Path, dict, LightboxModel, RunConfig, dict]:
    """A stored run's checkpoint (path, contents) and the model rebuilt from it; a file that is not a Lightbox
    checkpoint (foreign, damaged, malicious, another network's weights) is refused in one sentence."""
    path = checkpoint_path(run_id)          # a known run of the store, never a path built from user text
    ckpt = load_checkpoint(path, run_id)
    try:
        model, config, info = model_from_checkpoint(ckpt)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - settings or weights that do not rebuild a model of ours
        raise not_a_checkpoint(path, run_id, "its settings or weights do not rebuild the run's network") from err
    return path, ckpt, model, config, info


_CACHE: dict[tuple[str, str], tuple[float, Predictor]] = {}
_LOCK = threading.Lock()


def load_predictor(run_id: str, device: str = "auto", actor: Actor | None = None) -> Predictor:
    """The run's best model, cached per run and checkpoint time so a rerun of the UI does not reload it.
    A student predicts only with their own runs."""
    if actor is not None:
        access.check_run(actor, run_id, "predict with")
    path = checkpoint_path(run_id)
    dev = pick_device(device)
    key = (run_id, str(dev))
    stamp = path.stat().st_mtime
    with _LOCK:
        hit = _CACHE.get(key)
        if hit and hit[0] == stamp:
            return hit[1]
    _, _, model, config, info = load_run_model(run_id)
    predictor = Predictor(model, config, info, dev, run_id)
    with _LOCK:
        if len(_CACHE) >= 4:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = (stamp, predictor)
    return predictor


def held_out_samples(dataset_id: str) -> list[dict]:
    """The dataset's held-out test samples (key, source file name), for trying a model on unseen images."""
    return [s for s in load_manifest(dataset_id)["samples"] if s["split"] == "test"]


def predictable_runs() -> list[dict]:
    """Runs that have a model to predict with: finished ones, and any other with a best checkpoint."""
    return [r for r in store.list_runs() if r["status"] == "done" or has_best_checkpoint(r["id"])]
