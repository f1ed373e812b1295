"""Where did a classifier look? Grad-CAM on the last convolutional feature map, and plain gradient saliency."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from engine.errors import UserError
from engine.visualize.images import to_rgb

NO_CONV = "Grad-CAM needs a convolutional network; the MLP baseline has no convolution layers."

# A jet-like ramp (cold blue → hot red), anchors at these heat values; enough for a readable heatmap.
_RAMP_AT = np.array([0.0, 0.125, 0.375, 0.625, 0.875, 1.0])
_RAMP_RGB = np.array([[0, 0, 143], [0, 0, 255], [0, 255, 255], [255, 255, 0], [255, 0, 0], [128, 0, 0]], float)
COARSE_SIDE = 4            # a map with fewer cells a side than this shows little more than "somewhere here"


@dataclass(frozen=True)
class CamLayer:
    """Which feature map Grad-CAM weighted and why: the last one, or an inner one when the last is a single cell."""

    name: str                             # module name in the model, e.g. "net.layer3"
    size: tuple[int, int]                 # its map's (height, width)
    input_size: tuple[int, int]           # the model input's (height, width)
    last: str = ""                        # the last layer's name when it was passed over
    last_size: tuple[int, int] = (0, 0)

    def note(self) -> str:
        """One plain sentence for the page: the layer used, its map size and, if so, why not the last one."""
        h, w = self.input_size
        used, px = f"`{_short(self.name)}` ({_cells(self.size)})", f"{h if h == w else f'{w}×{h}'} px input"
        if self.last:
            return (f"Grad-CAM used layer {used}: at {px} the last layer `{_short(self.last)}` is only "
                    f"{_cells(self.last_size)}, too coarse to show where the model looked; train at a larger "
                    "image size for a finer map.")
        if min(self.size) < COARSE_SIDE:
            return (f"Grad-CAM used the last layer {used} at {px}, so the map is coarse; train at a larger image "
                    "size for a finer one.")
        return f"Grad-CAM used the last layer {used} at {px}."


def _short(name: str) -> str:
    return name.removeprefix("net.")         # LightboxModel wraps every network as .net


def _cells(size: tuple[int, int]) -> str:
    h, w = size
    return f"{w}×{h}"


@dataclass
class CamResult:
    heatmap: np.ndarray     # float32 (H, W) in [0, 1], at the size of the image it explains
    overlay: np.ndarray     # uint8 (H, W, 3): the heatmap blended over the image
    class_index: int        # the class whose score was explained
    layer: str              # the module whose feature map was weighted ("" for saliency)
    note: str = ""          # one sentence for people: which layer, how coarse, and why that one


def _has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


@contextmanager
def _feature_maps(model: nn.Module) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Record, in execution order, every 4-D output of a module that contains a convolution. The last one with
    more than 1×1 cells is the deepest feature map still tied to image positions."""
    found: list[tuple[str, torch.Tensor]] = []
    handles = []
    for name, module in model.named_modules():
        if name and _has_conv(module):
            def hook(_m, _inputs, output, name=name):
                # requires_grad: only this call's graph, not a plain prediction running meanwhile in another thread
                if isinstance(output, torch.Tensor) and output.requires_grad and output.dim() == 4:
                    found.append((name, output))
            handles.append(module.register_forward_hook(hook))
    try:
        yield found
    finally:
        for handle in handles:          # hooks left behind would keep every activation of every later call
            handle.remove()


@contextmanager
def _input_gradients(model: nn.Module, x: torch.Tensor) -> Iterator[torch.Tensor]:
    """Eval mode and a fresh input that requires grad; parameters need not (frozen models work)."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield x.detach().clone().requires_grad_(True)
    finally:
        model.train(was_training)


def _batch(x: torch.Tensor) -> torch.Tensor:
    return x[None] if x.dim() == 3 else x


def grad_cam(model: nn.Module, x: torch.Tensor, class_index: int | None = None) -> tuple[np.ndarray, int, str]:
    """Grad-CAM of one image (C, H, W) for the predicted (or given) class → ((H, W) heat in [0, 1], class, layer)."""
    heat, index, layer = grad_cam_with_layer(model, x, class_index)
    return heat, index, layer.name


def grad_cam_with_layer(model: nn.Module, x: torch.Tensor,
                        class_index: int | None = None) -> tuple[np.ndarray, int, CamLayer]:
    """grad_cam, with the layer it weighted and why that one (CamLayer.note says it in words)."""
    if not _has_conv(model):
        raise UserError(NO_CONV)
    x = _batch(x)
    with _input_gradients(model, x) as inp, _feature_maps(model) as maps:
        logits = model(inp)
        spatial = [(name, act) for name, act in maps if act.shape[-2:].numel() > 1]
        if not spatial:
            raise UserError("Grad-CAM found no spatial feature map in this network; the image may be too small "
                            "for its downsampling.")
        index = int(logits[0].argmax()) if class_index is None else int(class_index)
        name, act = spatial[-1]
        layer = _chosen(name, act, maps[-1], tuple(x.shape[-2:]))
        grads, = torch.autograd.grad(logits[0, index], act)
    weights = grads.mean(dim=(2, 3), keepdim=True)             # how much each channel pushes the class score up
    cam = F.relu((weights * act).sum(1, keepdim=True)).detach().float()
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    return _unit(cam), index, layer


def _chosen(name: str, act: torch.Tensor, last: tuple[str, torch.Tensor], input_size: tuple) -> CamLayer:
    size = tuple(int(n) for n in act.shape[-2:])
    if last[0] == name:
        return CamLayer(name, size, input_size)
    # the deepest maps are a single cell at this input size: an inner, finer one was used instead
    return CamLayer(name, size, input_size, last=last[0], last_size=tuple(int(n) for n in last[1].shape[-2:]))


def saliency(model: nn.Module, x: torch.Tensor, class_index: int | None = None) -> np.ndarray:
    """|d score / d pixel| (max over channels), normalised to [0, 1]; works for any network, the MLP included."""
    x = _batch(x)
    with _input_gradients(model, x) as inp:
        logits = model(inp)
        index = int(logits[0].argmax()) if class_index is None else int(class_index)
        grads, = torch.autograd.grad(logits[0, index], inp)
    return _unit(grads[0].abs().amax(0).float())


def _unit(heat: torch.Tensor) -> np.ndarray:
    heat = heat.cpu()
    top = float(heat.max())
    return (heat / top if top > 0 else torch.zeros_like(heat)).numpy().astype(np.float32)


def heat_colours(heat: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] → uint8 (H, W, 3) on a blue-to-red ramp."""
    channels = [np.interp(heat, _RAMP_AT, _RAMP_RGB[:, c]) for c in range(3)]
    return np.stack(channels, axis=-1).astype(np.uint8)


def heat_scale(width: int = 240, bar: int = 12, labels: tuple[str, str] = ("low", "high")) -> np.ndarray:
    """A colour-scale legend for heat_colours: the ramp from 0 (left) to 1 (right) as a bar of `bar` rows, with
    the two labels written under its ends → uint8 (bar + 14, width, 3)."""
    ramp = heat_colours(np.linspace(0.0, 1.0, width, dtype=np.float32)[None].repeat(bar, axis=0))
    canvas = Image.new("RGB", (width, bar + 14), "white")
    canvas.paste(Image.fromarray(ramp), (0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((1, bar + 1), labels[0], fill=(40, 40, 40))
    draw.text((width - 1, bar + 1), labels[1], fill=(40, 40, 40), anchor="ra")
    return np.asarray(canvas)


def heatmap_overlay(rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Colour the image by heat; cold regions stay as they are, so the anatomy remains readable."""
    weight = (alpha * heat)[..., None]
    mixed = (1 - weight) * rgb.astype(np.float32) + weight * heat_colours(heat).astype(np.float32)
    return mixed.clip(0, 255).astype(np.uint8)


def resize_heat(heat: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if heat.shape == tuple(shape):
        return heat
    out = F.interpolate(torch.from_numpy(heat)[None, None], size=shape, mode="bilinear", align_corners=False)
    return out[0, 0].clamp(0, 1).numpy()


def explain_image(model: nn.Module, x: torch.Tensor, image: np.ndarray, class_index: int | None = None,
                  device: torch.device | str = "cpu", method: str = "gradcam") -> CamResult:
    """Explain the model input x (C, S, S) and map the heat onto the original image (C, H, W) in [0, 1]."""
    x = x.to(device)
    if method == "saliency":
        heat, name, note = saliency(model, x, class_index), "", ""
        index = class_index if class_index is not None else _predicted(model, x)
    else:
        heat, index, layer = grad_cam_with_layer(model, x, class_index)
        name, note = layer.name, layer.note()
    heat = resize_heat(heat, image.shape[-2:])
    return CamResult(heat, heatmap_overlay(to_rgb(image), heat), int(index), name, note)


@torch.no_grad()
def _predicted(model: nn.Module, x: torch.Tensor) -> int:
    return int(model(_batch(x))[0].argmax())
