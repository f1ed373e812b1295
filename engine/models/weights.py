"""Transfer learning: ImageNet weights from the local torch cache (never downloaded), user weight files, freezing."""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
import torchvision.models
from torch import nn

from engine.errors import UserError, shown
from engine.models.checkpoints import load_checkpoint, read_torch_file
from engine.models.registry import MODELS, ModelSpec
from engine.runs import paths, store

log = logging.getLogger(__name__)

# torchvision names weight files <name>-<first hex digits of the file's sha256>.pth (torch.hub's convention).
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{6,})\.")


@dataclass(frozen=True)
class ImageNetSource:
    """Which torchvision weights fit an entry, and how their tensor names map onto our model's."""

    weights: str                                  # torchvision Weights enum name, e.g. "ResNet18_Weights"
    strip: str = ""                               # prefix removed from the file's keys ...
    add: str = ""                                 # ... and the prefix put in its place
    rename: Callable[[str], str] | None = None    # extra fix-up of old key names (DenseNet's legacy files)

    def model_key(self, key: str) -> str:
        if self.rename:
            key = self.rename(key)
        if self.strip and key.startswith(self.strip):
            key = key[len(self.strip):]
        return self.add + key


@dataclass
class LoadReport:
    """What a weight load did: tensors used, tensors of the file left out (with why), model tensors left as built."""

    source: str
    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)   # file key -> reason
    untouched: list[str] = field(default_factory=list)      # model keys that kept their fresh initialisation

    message: str = ""                                       # one sentence for the user, when the loader wrote one

    def summary(self) -> str:
        return self.message or (f"Loaded {len(self.loaded)} tensors from {self.source}; "
                                f"{len(self.skipped)} skipped, {len(self.untouched)} left freshly initialised.")


# ---------------------------------------------------------------- input channels

def first_conv_name(model: nn.Module) -> str:
    """Qualified name of the stem convolution: the first Conv2d the model registers."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name
    raise ValueError("model has no Conv2d")


def set_in_channels(model: nn.Module, in_channels: int) -> nn.Module:
    """Swap a torchvision net's 3-channel stem for one taking in_channels (same kernel, stride, padding)."""
    name = first_conv_name(model)
    old = model.get_submodule(name)
    if old.in_channels == in_channels:
        return model
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                    old.dilation, old.groups, old.bias is not None, old.padding_mode,
                    device=old.weight.device, dtype=old.weight.dtype)
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return model


def adapt_stem_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Fit an RGB stem kernel (out, 3, k, k) to in_channels inputs.

    One channel: sum over RGB. A grey image shown to the RGB net as R=G=B=g gives Σ_c W_c * g = (Σ_c W_c) * g,
    so the summed kernel reproduces exactly what the pretrained net computes on the grey image copied to three
    channels. Other counts: cycle the RGB kernels and scale by 3/in_channels to keep activations the same size.
    """
    if weight.shape[1] == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_channels // weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


# ---------------------------------------------------------------- loading

def apply_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str,
                     to_model_key: Callable[[str], str] = lambda key: key) -> LoadReport:
    """Copy every tensor whose name and shape fit; a head of another class count is skipped and stays fresh."""
    target = model.state_dict()
    stem = first_conv_name(model) + ".weight"
    report, update = LoadReport(source), {}
    for key, value in state.items():
        name = to_model_key(key)
        if not isinstance(value, torch.Tensor):
            report.skipped[key] = "not a tensor"
        elif name not in target:
            report.skipped[key] = "not in this model"
        else:
            if name == stem and value.dim() == 4 and value.shape[1] != target[name].shape[1]:
                value = adapt_stem_weight(value, target[name].shape[1])
            if value.shape != target[name].shape:
                report.skipped[key] = f"shape {tuple(value.shape)} does not fit {tuple(target[name].shape)}"
                continue
            update[name] = value
            report.loaded.append(name)
    report.untouched = [key for key in target if key not in update]
    model.load_state_dict(update, strict=False)
    log.info(report.summary())
    return report


def load_file(model: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Load a user's weight file (a state dict, or one under "state_dict"/"model") with weights_only=True."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"Weights file {path} does not exist; check the path or choose 'none' to train from scratch.")
    state = read_torch_file(path, f"Could not read weights from {path}",
                            "save a plain state dict with torch.save(model.state_dict(), path)")
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict):
        raise UserError(f"{path} holds no state dict; save one with torch.save(model.state_dict(), path).")
    report = apply_state_dict(model, state, str(path), _strip_wrappers)
    if not report.loaded:
        raise UserError(f"None of the weights in {path.name} fit this model; "
                        "use a file saved from the same architecture.")
    return report


# ---------------------------------------------------------------- starting from one of your runs

RUN_PREFIX = "run:"          # RunConfig.pretrained = "run:RUN_ID": the best checkpoint of a finished run


def source_run_id(pretrained: object) -> str | None:
    """The run id of a "run:ID" weights source; None for none, imagenet, a file or an encoder."""
    if isinstance(pretrained, str) and pretrained.strip().lower().startswith(RUN_PREFIX):
        return pretrained.strip()[len(RUN_PREFIX):].strip()
    return None


def source_checkpoint(run_id: str) -> dict:
    """The best checkpoint of a finished run (kept in memory for the next call: preflight, normalisation and the
    model build of one run start all read it)."""
    run = store.require_run(run_id)
    path = paths.run_dir(run["id"]) / "best.pt"
    if run["status"] != "done" or not path.is_file():
        raise UserError(f"Run {run['id']} is {run['status']}{'' if path.is_file() else ' without a saved model'}; "
                        "start from a finished run (status done).")
    stat = path.stat()
    return _read_source(str(path), stat.st_mtime_ns, run["id"])


@functools.lru_cache(maxsize=2)
def _read_source(path: str, mtime_ns: int, run_id: str) -> dict:
    ckpt = load_checkpoint(Path(path), run_id)
    if not isinstance(ckpt.get("model"), dict) or not isinstance(ckpt.get("dataset"), dict):
        raise UserError(f"best.pt of run {run_id} is not a Lightbox checkpoint; start from another run.")
    return ckpt


def source_normalisation(run_id: str, channels: int) -> tuple[list[float], list[float]]:
    """The per-channel mean and std the source run's network saw its inputs with (its Normalize buffers), so the
    loaded features see images as they were trained on; averaged over channels when the channel count differs."""
    state = source_checkpoint(run_id)["model"]
    mean, std = state["normalize.mean"].flatten().tolist(), state["normalize.std"].flatten().tolist()
    if len(mean) != channels:
        mean, std = [sum(mean) / len(mean)] * channels, [sum(std) / len(std)] * channels
    return mean, std


def load_run(model: nn.Module, spec: ModelSpec, run_id: str, in_channels: int, num_classes: int) -> LoadReport:
    """Load a finished run's best weights into a fresh network of the same architecture: tensors whose names and
    shapes match load, the stem is adapted to another channel count, a head of another class count stays fresh."""
    ckpt = source_checkpoint(run_id)
    config, info = ckpt.get("config") or {}, ckpt["dataset"]
    arch = config.get("arch")
    if arch != spec.name:
        title = _title(arch)
        raise UserError(f"Run {run_id} trained a {title}, and this run is a {spec.title}: starting from a run needs "
                        f"the same architecture; choose {title} or start from another run.")
    net = {key[len("net."):]: value for key, value in ckpt["model"].items() if key.startswith("net.")}
    report = apply_state_dict(model, net, f"run {run_id}")
    if not report.loaded:
        raise UserError(f"None of the weights of run {run_id} fit this {spec.title} (its settings differ); use the "
                        "same architecture settings as that run, or start from scratch.")
    report.message = run_load_message(report, run_id, spec.title, len(net), info, in_channels, num_classes)
    log.info(report.message)
    return report


def run_load_message(report: LoadReport, run_id: str, title: str, total: int, info: dict, in_channels: int,
                     num_classes: int) -> str:
    """"Kept 52 of 54 tensors from run X (U-Net, 2 classes); rebuilt the output layer for 3 classes."."""
    classes, channels = info.get("num_classes"), info.get("channels")
    shape = {k: v for k, v in report.skipped.items() if v.startswith("shape")}
    what = f"{title}, {classes} class{'' if classes == 1 else 'es'}"
    if channels != in_channels:
        what += f", {channels} channel{'' if channels == 1 else 's'}"
    done = []
    if classes != num_classes and shape:
        done.append(f"rebuilt the output layer for {num_classes} classes")
    elif shape:
        done.append(f"{len(shape)} tensor{'' if len(shape) == 1 else 's'} of another shape start fresh")
    if channels != in_channels:
        plural = "" if in_channels == 1 else "s"
        done.append(f"adapted the first layer from {channels} to {in_channels} channel{plural}")
    others = len(report.skipped) - len(shape)
    if others:
        done.append(f"{others} tensor{'' if others == 1 else 's'} not in this model left out")
    return (f"Kept {len(report.loaded)} of {total} tensors from run {run_id} ({what})"
            + (f"; {', '.join(done)}." if done else "."))


def _title(arch: object) -> str:
    """The display title of an architecture name, whichever task its entry serves."""
    spec = next((spec for (_, name), spec in MODELS.items() if name == arch), None)
    return spec.title if spec else f"'{shown(arch)}'"


def _strip_wrappers(key: str) -> str:
    # Files saved from nn.DataParallel or torch.compile prefix every key.
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key


def imagenet_source(spec: ModelSpec, options: dict[str, Any]) -> ImageNetSource | None:
    source = spec.imagenet
    return source(options) if callable(source) else source


def imagenet_urls(source: ImageNetSource) -> list[str]:
    """Download addresses of the acceptable ImageNet files, torchvision's default first."""
    enum = getattr(torchvision.models, source.weights)
    members = [enum.DEFAULT] + [w for w in enum if w is not enum.DEFAULT]
    return [w.url for w in members if w.name.startswith("IMAGENET1K_V")]


def checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


@dataclass(frozen=True)
class ImageNetStatus:
    """Whether an entry's ImageNet weights can be used on this machine now, and what to do if not."""

    exists: bool                   # torchvision publishes ImageNet weights for this entry
    path: Path | None = None       # the file in the local torch cache, when it is there
    url: str = ""                  # where to download it on a computer with internet
    message: str = ""              # the sentence for the user when the file is missing

    @property
    def available(self) -> bool:
        return self.path is not None


def imagenet_status(spec: ModelSpec, options: dict[str, Any] | None = None) -> ImageNetStatus:
    """Look for the weight file in $TORCH_HOME/hub/checkpoints (no download, no hash check: that is at load)."""
    source = imagenet_source(spec, options or spec.default_options()) if spec.pretrained else None
    if source is None:
        return ImageNetStatus(False, message=f"{spec.title} has no ImageNet weights; train from scratch or supply a "
                                             "weights file.")
    folder = checkpoint_dir()
    urls = imagenet_urls(source)
    for url in urls:
        path = folder / url.rsplit("/", 1)[-1]
        if path.is_file():
            return ImageNetStatus(True, path, url)
    name = urls[0].rsplit("/", 1)[-1]
    return ImageNetStatus(True, None, urls[0],
                          f"ImageNet weights for {spec.title} are not on this machine: on a computer with internet "
                          f"download {urls[0]} and copy {name} into {folder}, or train from scratch.")


def load_imagenet(model: nn.Module, spec: ModelSpec, options: dict[str, Any]) -> LoadReport:
    """Load ImageNet weights for an entry from $TORCH_HOME/hub/checkpoints, after checking their sha256."""
    status = imagenet_status(spec, options)
    if not status.available:
        raise UserError(status.message or f"{spec.title} has no ImageNet weights; train from scratch or supply "
                        "a weights file.")
    verify_hash(status.path, status.url)
    state = read_torch_file(status.path, f"Could not read the ImageNet weights {status.path.name} in "
                            f"{status.path.parent}", f"delete the file and download it again from {status.url}")
    return apply_state_dict(model, state, status.path.name, imagenet_source(spec, options).model_key)


def verify_hash(path: Path, url: str) -> None:
    """Refuse a cached file whose sha256 does not start with the digits in its official name."""
    found = _HASH_IN_NAME.findall(path.name)
    if not found:
        raise UserError(f"Cannot check {path.name}: its name carries no hash; use the file from {url}.")
    if _sha256(path).startswith(found[-1]):
        return
    raise UserError(f"{path.name} in {path.parent} is damaged or not the official file (its SHA-256 does not "
                    f"start with {found[-1]}); delete it and download it again from {url}.")


_verified: dict[tuple, str] = {}


def _sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _verified:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _verified[key] = digest.hexdigest()
    return _verified[key]


# ---------------------------------------------------------------- freezing

class FrozenStatsBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that always normalises with its stored statistics and never updates them, even in train()."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def freeze_backbone(model: nn.Module, spec: ModelSpec) -> nn.Module:
    """Train only the head named in the registry; every other parameter gets requires_grad=False.

    BatchNorm layers of the frozen part are swapped for FrozenStatsBatchNorm2d (same state-dict keys), so they
    keep the statistics the backbone learnt with even while the trainer calls model.train(). The alternative,
    train-mode BN under a frozen backbone, re-estimates statistics from small medical batches (2-16 images)
    and shifts the features the head is being fitted to; Keras does the same when trainable=False.
    """
    if not spec.head:
        raise UserError(f"{spec.title} has no separate head to train; turn off 'freeze backbone'.")

    def in_head(name: str) -> bool:
        return any(name == head or name.startswith(head + ".") for head in spec.head)

    for name, param in model.named_parameters():
        param.requires_grad_(in_head(name))
    for name, module in list(model.named_modules()):
        if type(module) is nn.BatchNorm2d and name and not in_head(name) and module.track_running_stats:
            frozen = FrozenStatsBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                            device=module.running_mean.device)
            frozen.load_state_dict(module.state_dict())
            frozen.requires_grad_(False)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, frozen)
    return model


def trainable_parameter_names(model: nn.Module) -> list[str]:
    return [name for name, param in model.named_parameters() if param.requires_grad]
