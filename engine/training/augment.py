"""Augmentation catalog: each entry is a torchvision v2 transform plus the sliders the UI shows for it.

Images travel as `tv_tensors.Image` and masks as `tv_tensors.Mask`, so geometric transforms move both with
one random draw (masks resampled nearest, out-of-image regions filled with 0) and intensity transforms skip the mask.
A v2 call on a batch would draw one parameter set for all of it, so `Augmenter` works one sample at a time.
Transforms run in catalog order (geometry first, then intensity), whatever order the names are given in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from engine.errors import UserError

BILINEAR = v2.InterpolationMode.BILINEAR


@dataclass(frozen=True)
class Param:
    """One slider: a float in [low, high] starting at default."""

    name: str
    label: str
    low: float
    high: float
    default: float
    step: float


@dataclass(frozen=True)
class AugSpec:
    """A catalog entry: what the UI shows and how to build the transform from slider values."""

    name: str
    title: str
    description: str
    params: tuple[Param, ...]
    build: Callable[[dict[str, float]], v2.Transform]


# ---------------------------------------------------------------- image-only (intensity) transforms

class IntensityTransform(v2.Transform):
    """Base for transforms that change pixel values of images only; masks and other inputs pass through."""

    _transformed_types = (tv_tensors.Image,)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"u": float(torch.rand(()))}  # one uniform draw in [0,1) per call, from torch's global RNG

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        out = self.apply(inpt.as_subclass(torch.Tensor), params["u"]).clamp(0.0, 1.0)
        # clamp here, not only at the end, so a later gamma never sees negative values
        return tv_tensors.wrap(out, like=inpt)

    def apply(self, image: torch.Tensor, u: float) -> torch.Tensor:
        raise NotImplementedError


class RandomBrightness(IntensityTransform):
    """Multiply the image by a factor drawn from [1 - amount, 1 + amount]."""

    def __init__(self, amount: float) -> None:
        super().__init__()
        self.amount = amount

    def apply(self, image: torch.Tensor, u: float) -> torch.Tensor:
        return image * (1.0 + self.amount * (2 * u - 1))


class RandomContrast(IntensityTransform):
    """Stretch values around the image mean by a factor in [1 - amount, 1 + amount]; any channel count."""

    def __init__(self, amount: float) -> None:
        super().__init__()
        self.amount = amount

    def apply(self, image: torch.Tensor, u: float) -> torch.Tensor:
        # ColorJitter refuses channel counts other than 1 or 3; medical stacks can have any
        mean = image.mean(dim=(-3, -2, -1), keepdim=True)
        return (image - mean) * (1.0 + self.amount * (2 * u - 1)) + mean


class RandomGamma(IntensityTransform):
    """Raise the image to a power gamma in [1/(1+amount), 1+amount], drawn uniformly on a log scale."""

    def __init__(self, amount: float) -> None:
        super().__init__()
        self.amount = amount

    def apply(self, image: torch.Tensor, u: float) -> torch.Tensor:
        gamma = (1.0 + self.amount) ** (2 * u - 1)  # log-uniform: brightening and darkening equally likely
        return image.clamp_min(0.0) ** gamma


class SmoothElastic(v2.ElasticTransform):
    """v2.ElasticTransform with a faster, size-safe displacement field; warping (and nearest for masks) is v2's.

    v2 blurs the noise with a full 2-D kernel (slow on CPU) after reflect padding, which fails on images smaller
    than the kernel. Here the noise is drawn on a canvas larger by the kernel radius and blurred separably
    without padding: the same Gaussian field, for any image size.
    """

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = F.get_size(flat_inputs[0])
        dx = _smooth_noise(height, width, self.sigma[0]) * self.alpha[0] / width
        dy = _smooth_noise(height, width, self.sigma[1]) * self.alpha[1] / height
        return {"displacement": torch.stack([dx, dy], dim=-1).unsqueeze(0)}  # 1 × H × W × 2, as v2 expects


def _smooth_noise(height: int, width: int, sigma: float) -> torch.Tensor:
    """Uniform noise in [-1, 1] blurred by a Gaussian of `sigma` pixels, shape (height, width)."""
    radius = max(1, int(4 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    noise = torch.rand(1, 1, height + 2 * radius, width + 2 * radius) * 2 - 1
    rows = torch.nn.functional.conv2d(noise, kernel.view(1, 1, 1, -1))
    return torch.nn.functional.conv2d(rows, kernel.view(1, 1, -1, 1))[0, 0]


class RandomResizedCropSameSize(v2.Transform):
    """Crop a random square-ratio window (side fraction in [min_size, 1]) and resize it back to the input size."""

    def __init__(self, min_size: float) -> None:
        super().__init__()
        self.min_size = min_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = F.get_size(flat_inputs[0])
        fraction = self.min_size + (1.0 - self.min_size) * float(torch.rand(()))
        h, w = max(1, round(height * fraction)), max(1, round(width * fraction))
        top = int(torch.randint(0, height - h + 1, ()))
        left = int(torch.randint(0, width - w + 1, ()))
        return {"top": top, "left": left, "height": h, "width": w, "size": [height, width]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        box = {key: params[key] for key in ("top", "left", "height", "width")}
        cropped = self._call_kernel(F.crop, inpt, **box)
        # v2 resizes masks with NEAREST, which samples half a pixel off from where BILINEAR samples the image
        # when upscaling; NEAREST_EXACT samples pixel centres like the image does, so the two stay aligned
        mode = v2.InterpolationMode.NEAREST_EXACT if isinstance(inpt, tv_tensors.Mask) else BILINEAR
        return self._call_kernel(F.resize, cropped, params["size"], interpolation=mode, antialias=True)


# ---------------------------------------------------------------- catalog

def _probability() -> Param:
    return Param("p", "Probability", 0.0, 1.0, 0.5, 0.05)


def _blur(p: dict[str, float]) -> v2.Transform:
    sigma = p["sigma"]
    kernel = 2 * int(np.ceil(3 * sigma)) + 1  # ±3 sigma holds >99 % of the Gaussian's weight
    return v2.GaussianBlur(kernel, sigma=(0.1, max(0.1, sigma)))


_CATALOG: tuple[AugSpec, ...] = (
    AugSpec("hflip", "Horizontal flip", "Mirror left–right.", (_probability(),),
            lambda p: v2.RandomHorizontalFlip(p["p"])),
    AugSpec("vflip", "Vertical flip", "Mirror top–bottom.", (_probability(),),
            lambda p: v2.RandomVerticalFlip(p["p"])),
    AugSpec("rotate", "Rotation", "Rotate by a random angle up to the maximum, either way.",
            (Param("degrees", "Max rotation (degrees)", 0.0, 180.0, 15.0, 1.0),),
            lambda p: v2.RandomRotation(p["degrees"], interpolation=BILINEAR, fill=0)),
    AugSpec("shift", "Shift", "Move the image up to a fraction of its size in each direction.",
            (Param("fraction", "Max shift (fraction of size)", 0.0, 0.5, 0.1, 0.01),),
            lambda p: v2.RandomAffine(0, translate=(p["fraction"], p["fraction"]), interpolation=BILINEAR, fill=0)),
    AugSpec("zoom", "Zoom", "Scale the image in or out by up to the given fraction.",
            (Param("amount", "Max zoom (± fraction)", 0.0, 0.5, 0.1, 0.01),),
            lambda p: v2.RandomAffine(0, scale=(1 - p["amount"], 1 + p["amount"]), interpolation=BILINEAR, fill=0)),
    AugSpec("shear", "Shear", "Slant the image along both axes by up to the given angle.",
            (Param("degrees", "Max shear (degrees)", 0.0, 45.0, 10.0, 1.0),),
            lambda p: v2.RandomAffine(0, shear=(-p["degrees"], p["degrees"], -p["degrees"], p["degrees"]),
                                      interpolation=BILINEAR, fill=0)),
    AugSpec("elastic", "Elastic deformation", "Warp the image with a smooth random displacement field, like soft tissue.",
            (Param("alpha", "Strength (alpha)", 0.0, 200.0, 50.0, 5.0),
             Param("sigma", "Smoothness (sigma, px)", 1.0, 20.0, 5.0, 0.5)),
            lambda p: SmoothElastic(alpha=p["alpha"], sigma=p["sigma"], interpolation=BILINEAR, fill=0)),
    AugSpec("random_crop", "Random resized crop", "Crop a random window and resize it back to full size (a zoom-in).",
            (Param("min_size", "Smallest crop (fraction of side)", 0.3, 1.0, 0.8, 0.05),),
            lambda p: RandomResizedCropSameSize(p["min_size"])),
    AugSpec("brightness", "Brightness", "Make the image brighter or darker by up to the given fraction.",
            (Param("amount", "Max change (± fraction)", 0.0, 0.9, 0.2, 0.05),),
            lambda p: RandomBrightness(p["amount"])),
    AugSpec("contrast", "Contrast", "Increase or decrease contrast around the mean by up to the given fraction.",
            (Param("amount", "Max change (± fraction)", 0.0, 0.9, 0.2, 0.05),),
            lambda p: RandomContrast(p["amount"])),
    AugSpec("gamma", "Gamma", "Bend the intensity curve: gamma between 1/(1+a) and 1+a.",
            (Param("amount", "Gamma range a", 0.0, 1.0, 0.3, 0.05),),
            lambda p: RandomGamma(p["amount"])),
    AugSpec("noise", "Gaussian noise", "Add random noise with the given standard deviation (image scale 0–1).",
            (Param("std", "Noise std", 0.0, 0.3, 0.03, 0.005),),
            lambda p: v2.GaussianNoise(sigma=p["std"], clip=True)),
    AugSpec("blur", "Gaussian blur", "Blur with a random sigma up to the maximum, like a softer scanner.",
            (Param("sigma", "Max blur sigma (px)", 0.1, 3.0, 1.0, 0.1),),
            _blur),
)

AUGMENTATIONS: dict[str, AugSpec] = {spec.name: spec for spec in _CATALOG}


# ---------------------------------------------------------------- pipeline

class Augmenter:
    """Applies the chosen transforms to one image (and mask) at a time, each sample with its own random draw."""

    def __init__(self, names: tuple[str, ...], transform: v2.Transform | None) -> None:
        self.names = names
        self.transform = transform

    def __bool__(self) -> bool:
        return self.transform is not None

    def __call__(self, image: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augment a (C,H,W) float image in [0,1] and an optional (H,W) integer mask; shapes and dtypes are kept."""
        if not image.is_floating_point():
            raise TypeError(f"Augmenter expects a float image in [0, 1], got {image.dtype}.")
        if self.transform is None:
            return image, mask
        if mask is None:
            out = self.transform(tv_tensors.Image(image))
            return out.as_subclass(torch.Tensor).clamp(0.0, 1.0), None
        out_image, out_mask = self.transform(tv_tensors.Image(image), tv_tensors.Mask(mask.unsqueeze(0)))
        out_mask = out_mask.as_subclass(torch.Tensor).squeeze(0).to(mask.dtype)
        return out_image.as_subclass(torch.Tensor).clamp(0.0, 1.0), out_mask

    def batch(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augment (N,C,H,W) images and optional (N,H,W) masks sample by sample."""
        if self.transform is None:
            return images, masks
        pairs = [self(images[i], None if masks is None else masks[i]) for i in range(images.shape[0])]
        out_images = torch.stack([image for image, _ in pairs])
        out_masks = None if masks is None else torch.stack([mask for _, mask in pairs])
        return out_images, out_masks


def resolve_params(names: list[str], params: dict[str, dict[str, float]] | None = None) -> dict[str, dict[str, float]]:
    """Fill defaults and check every chosen augmentation's values; UserError names the bad one."""
    params = params or {}
    resolved: dict[str, dict[str, float]] = {}
    for name in names:
        spec = _spec(name)
        given = dict(params.get(name, {}))
        unknown = sorted(set(given) - {p.name for p in spec.params})
        if unknown:
            raise UserError(f"{spec.title} has no setting '{unknown[0]}'; remove it from the augmentation settings.")
        resolved[name] = {p.name: _checked(spec, p, given.get(p.name, p.default)) for p in spec.params}
    return resolved


def build_pipeline(names: list[str], params: dict[str, dict[str, float]] | None = None) -> Augmenter:
    """Build an Augmenter from augmentation names and optional slider values (defaults fill the rest)."""
    chosen = [spec.name for spec in _CATALOG if spec.name in set(names)]
    for name in names:
        _spec(name)  # unknown names fail before anything is built
    values = resolve_params(chosen, params)
    transforms = [AUGMENTATIONS[name].build(values[name]) for name in chosen]
    return Augmenter(tuple(chosen), v2.Compose(transforms) if transforms else None)


def preview(image: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor | None, names: list[str],
            params: dict[str, dict[str, float]] | None = None, n: int = 4,
            seed: int = 0) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Return n augmented copies of one sample, the same for the same seed, leaving the global RNG untouched."""
    augmenter = build_pipeline(names, params)
    image_t = _cpu_tensor(image).float()
    mask_t = None if mask is None else _cpu_tensor(mask)
    samples = []
    with torch.random.fork_rng(devices=[]):  # restores the CPU RNG state on exit, so training draws are unchanged
        torch.manual_seed(seed)
        for _ in range(n):
            out_image, out_mask = augmenter(image_t, mask_t)
            samples.append((out_image.numpy().astype(np.float32), None if out_mask is None else out_mask.numpy()))
    return samples


def _cpu_tensor(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu()
    return torch.from_numpy(np.ascontiguousarray(array))


def _spec(name: str) -> AugSpec:
    if name not in AUGMENTATIONS:
        raise UserError(f"Unknown augmentation '{name}'; choose from {', '.join(AUGMENTATIONS)}.")
    return AUGMENTATIONS[name]


def _checked(spec: AugSpec, param: Param, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{spec.title}: '{param.label}' must be a number, got {value!r}.") from None
    if not param.low <= number <= param.high:
        raise UserError(f"{spec.title}: '{param.label}' must be between {param.low:g} and {param.high:g}, "
                        f"got {number:g}.")
    return number
