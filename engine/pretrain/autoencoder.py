"""Pre-train an architecture as a denoising or masked autoencoder on unlabeled images, then save the weights a
labelled run can start from (the seeds' small-data remedy: learn what the images look like before learning labels).

Segmentation networks already map an image to an image: built with one output per image channel, the whole net
(encoder and decoder) learns to give back the clean image from a corrupted one. Classification backbones get a
small upsampling decoder behind their convolutional trunk; only the trunk is kept. The output layer is never
saved (its shape depends on the classes of the later task), so the fine-tune rebuilds it.
"""
from __future__ import annotations

import functools
import json
import math
import secrets
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from engine.config import RunConfig
from engine.device import pick_device
from engine.errors import UserError
from engine.models.network import Normalize
from engine.models.registry import ModelSpec, get_spec, models_for, resolve_options
from engine.pretrain import library
from engine.pretrain.unlabeled import STORED_SIZE, load_images, load_unlabeled
from engine.training.trainer import normalisation_for, seed_everything

MODES = {
    "denoising": "Gaussian noise is added to each image and the network learns to give back the clean image.",
    "masked": "Half of the image's square patches are blacked out and the network learns to fill them in.",
}
NOISE_SIGMA = 0.1            # of the [0, 1] intensity range: clearly visible, the anatomy still readable
MASK_FRACTION = 0.5          # share of patches hidden in masked mode
PATCHES_PER_SIDE = 8         # masked mode: the image is cut into this many patches per side

Progress = Callable[[int, int, float], None]     # (epoch done, epochs, mean loss of that epoch)


class TrunkAutoencoder(nn.Module):
    """A classification backbone's convolutional trunk followed by a small decoder back to the input size."""

    def __init__(self, trunk: nn.Module, features: int, channels: int, stages: int, width: int = 64) -> None:
        super().__init__()
        self.trunk = trunk
        layers: list[nn.Module] = [nn.Conv2d(features, width, 1), nn.ReLU(inplace=True)]
        for _ in range(stages):
            layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                       nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
        self.decoder = nn.Sequential(*layers)
        self.out = nn.Conv2d(width, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.decoder(self.trunk(x))
        if y.shape[-2:] != x.shape[-2:]:
            y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(y)


def trunk_of(model: nn.Module) -> nn.Module | None:
    """The convolutional feature extractor of a classification net, or None when it has no separable one."""
    if isinstance(model, torchvision.models.ResNet):
        return nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool,
                             model.layer1, model.layer2, model.layer3, model.layer4)
    features = getattr(model, "features", None)
    return features if isinstance(features, nn.Sequential) else None


def pretrainable(spec: ModelSpec) -> bool:
    """Every segmentation net; classification nets whose convolutional trunk can be taken apart from the head."""
    return spec.task == "segmentation" or _has_trunk(spec.task, spec.name)


@functools.cache
def _has_trunk(task: str, name: str) -> bool:
    spec = get_spec(name, task)
    with torch.device("meta"):          # no memory, no initialisation: asked once per architecture
        return trunk_of(spec.build(1, 2, **spec.default_options())) is not None


def pretrainable_models() -> list[ModelSpec]:
    return [spec for task in ("segmentation", "classification") for spec in models_for(task) if pretrainable(spec)]


def output_keys(spec: ModelSpec, channels: int, options: dict[str, Any]) -> set[str]:
    """State-dict keys whose shape depends on the number of classes: the output layer, rebuilt by the fine-tune."""
    with torch.device("meta"):
        one = spec.build(channels, channels, **options).state_dict()
        other = spec.build(channels, channels + 1, **options).state_dict()
    return {key for key in one if key not in other or one[key].shape != other[key].shape}


def build_autoencoder(spec: ModelSpec, channels: int, size: int,
                      options: dict[str, Any]) -> tuple[nn.Module, nn.Module, list[str]]:
    """(network to train, the target architecture whose weights are saved, the keys of it that are saved)."""
    if spec.task == "segmentation":
        net = spec.build(channels, channels, **options)
        dropped = output_keys(spec, channels, options)
        return net, net, [key for key in net.state_dict() if key not in dropped]
    model = spec.build(channels, 2, **options)
    trunk = trunk_of(model)
    if trunk is None:
        raise UserError(f"{spec.title} has no convolutional trunk that can be pre-trained on its own; choose "
                        f"one of: {', '.join(s.title for s in pretrainable_models())}.")
    with torch.no_grad():
        features = trunk.eval()(torch.zeros(1, channels, size, size))
    stages = max(0, round(math.log2(size / features.shape[-1])))
    shared = {id(t) for t in trunk.state_dict(keep_vars=True).values()}
    keep = [key for key, t in model.state_dict(keep_vars=True).items() if id(t) in shared]
    return TrunkAutoencoder(trunk, features.shape[1], channels, stages), model, keep


def corrupt(images: torch.Tensor, mode: str, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(corrupted input, per-pixel loss weight (N, 1, H, W)): noise everywhere, or hidden patches only."""
    if mode == "denoising":
        noise = torch.randn(images.shape, generator=generator) * NOISE_SIGMA
        return (images + noise).clamp(0, 1), torch.ones_like(images[:, :1])
    n, _, h, w = images.shape
    hidden = (torch.rand(n, 1, PATCHES_PER_SIDE, PATCHES_PER_SIDE, generator=generator) < MASK_FRACTION).float()
    hidden = F.interpolate(hidden, size=(h, w), mode="nearest")
    return images * (1 - hidden), hidden


def reconstruction_loss(output: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the weighted pixels (all of them, or the hidden patches), in [0, 1] units²."""
    squared = (output - target).pow(2) * weight
    return squared.sum() / (weight.sum() * target.shape[1]).clamp_min(1.0)


def check_request(arch: str, image_size: int, epochs: int, mode: str, batch_size: int, lr: float) -> ModelSpec:
    if mode not in MODES:
        raise UserError(f"Pre-training mode must be one of {', '.join(MODES)}, not '{mode}'.")
    candidates = [spec for spec in pretrainable_models() if spec.name == arch]
    if not candidates:
        spec = get_spec(arch)           # an unknown name is refused here, with the list of names
        raise UserError(f"{spec.title} cannot be pre-trained as an autoencoder; choose one of: "
                        f"{', '.join(s.title for s in pretrainable_models())}.")
    spec = candidates[0]
    if not spec.min_size <= image_size <= STORED_SIZE:
        raise UserError(f"Pre-training {spec.title} works at image sizes from {spec.min_size} to {STORED_SIZE} px "
                        f"(unlabeled images are stored at {STORED_SIZE} px), not {image_size}.")
    if not 1 <= epochs <= 1000:
        raise UserError(f"Epochs must be between 1 and 1000, not {epochs}.")
    if not 2 <= batch_size <= 1024:
        raise UserError(f"Batch size must be between 2 and 1024 (BatchNorm needs two images), not {batch_size}.")
    if not (isinstance(lr, (int, float)) and 0 < lr <= 1):
        raise UserError(f"Learning rate must be between 0 and 1, not {lr}.")
    return spec


def pretrain(unlabeled_id: str, arch: str = "unet", image_size: int = 64, epochs: int = 5,
             mode: str = "denoising", device: str = "auto", seed: int = 0, progress: Progress | None = None, *,
             batch_size: int = 16, lr: float = 1e-3, model_options: dict | None = None, name: str | None = None,
             owner: str | None = None) -> str:
    """Pre-train `arch` on an unlabeled set and save it to LIGHTBOX_HOME/encoders/<id>/; returns the id."""
    spec = check_request(arch, image_size, epochs, mode, batch_size, lr)
    options = resolve_options(spec, model_options)
    source = load_unlabeled(unlabeled_id)
    images = torch.from_numpy(load_images(unlabeled_id, image_size))
    if len(images) < 2:
        raise UserError(f"Unlabeled set {unlabeled_id} holds {len(images)} image; pre-training needs at least 2 "
                        "(and learns more from hundreds).")
    started = time.perf_counter()
    seed_everything(seed)
    generator = torch.Generator().manual_seed(seed)
    # The normalisation a run that starts from these weights will use, so the trunk sees inputs as it will then
    mean, std = normalisation_for(RunConfig(pretrained=library.PREFIX), images)
    autoencoder, target, keep = build_autoencoder(spec, images.shape[1], image_size, options)
    where = pick_device(device)
    model = nn.Sequential(Normalize(mean, std), autoencoder).to(where, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history, baseline = [], []
    for epoch in range(1, epochs + 1):
        loss, floor = _train_epoch(model, optimizer, images, mode, batch_size, generator, where)
        history.append(loss)
        baseline.append(floor)
        if progress:
            progress(epoch, epochs, loss)
    state = {key: value.detach().cpu().clone() for key, value in target.state_dict().items() if key in keep}
    info = {"arch": spec.name, "task": spec.task, "title": spec.title, "model_options": options,
            "channels": int(images.shape[1]), "image_size": image_size, "mode": mode, "epochs": epochs,
            "batch_size": batch_size, "lr": lr, "seed": seed, "loss": history[-1], "input_loss": baseline[-1],
            "history": history, "unlabeled_id": unlabeled_id, "unlabeled_name": source.get("name"),
            "images": len(images), "mean": mean, "std": std, "tensors": len(state),
            "seconds": round(time.perf_counter() - started, 2), "device": str(where)}
    return _save(state, info, name or f"{spec.title} · {mode} · {source.get('name')}", owner)


def _train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, mode: str,
                 batch_size: int, generator: torch.Generator, where: torch.device) -> tuple[float, float]:
    """One pass: (mean reconstruction loss, mean loss of giving back the corrupted input unchanged)."""
    model.train()
    order = torch.randperm(len(images), generator=generator)
    losses, floors = [], []
    for first in range(0, len(order), batch_size):
        index = order[first:first + batch_size]
        if len(index) < 2:
            continue            # a batch of one breaks BatchNorm
        clean = images[index]
        noisy, weight = corrupt(clean, mode, generator)
        clean, noisy, weight = (t.to(where).contiguous(memory_format=torch.channels_last)
                                for t in (clean, noisy, weight))
        loss = reconstruction_loss(model(noisy), clean, weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        floors.append(reconstruction_loss(noisy, clean, weight))
    mean_loss = float(torch.stack(losses).mean())
    if not math.isfinite(mean_loss):
        raise UserError("Pre-training stopped: the reconstruction loss became NaN or infinite; lower the learning "
                        "rate and try again.")
    return mean_loss, float(torch.stack(floors).mean())


def _save(state: dict, info: dict, name: str, owner: str | None) -> str:
    """Write weights and info to a hidden folder, then rename it: an encoder appears whole or not at all."""
    root = library.encoders_root()
    slug = "-".join(part for part in (info["arch"].replace("_", "-"), info["mode"]) if part)
    encoder_id = f"{slug}-{secrets.token_hex(3)}"
    staging = root / f".{encoder_id}.tmp"
    staging.mkdir()
    try:
        torch.save(state, staging / library.WEIGHTS_FILE)
        info = {"id": encoder_id, "name": name, "owner": owner,
                "created": datetime.now(UTC).isoformat(), **info}
        (staging / library.INFO_FILE).write_text(json.dumps(info, indent=1))
        staging.rename(root / encoder_id)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return encoder_id
