"""The simplest fully convolutional network: a strided conv encoder, then transposed convs back to full size."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.registry import Option, register


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad bottom/right so both sides divide by `multiple`; returns the padded tensor and the original size."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph or pw:
        # Replicate, not zeros: an edge of bright tissue should not meet an artificial black border.
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, (h, w)


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SimpleFCN(nn.Module):
    """Encoder: three conv+pool stages (1/8 resolution). Decoder: three learned 2x transposed convs.

    No dense layer anywhere, so one network labels every pixel of an image of any size in one pass, instead of
    classifying a sliding window around each pixel. Unlike U-Net there are no skips, so edges come out blurred.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 16):
        super().__init__()
        widths = [width, 2 * width, 4 * width]
        encoder: list[nn.Module] = []
        cin = in_channels
        for w in widths:
            encoder += _conv_bn_relu(cin, w) + [nn.MaxPool2d(2)]
            cin = w
        self.encoder = nn.Sequential(*encoder)
        decoder: list[nn.Module] = []
        for w in reversed(widths):
            decoder += [nn.ConvTranspose2d(cin, w, 2, stride=2, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            cin = w
        self.decoder = nn.Sequential(*decoder)
        self.head = nn.Conv2d(cin, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (h, w) = pad_to_multiple(x, 8)
        return self.head(self.decoder(self.encoder(x)))[..., :h, :w]


@register(name="fcn_simple", task="segmentation", title="FCN (simple)", year=2015,
          note="Fully convolutional: dense layers become convolutions and transposed convolutions upsample, so "
               "the net outputs a label map for any image size.",
          head=("decoder", "head"),
          options=(Option("width", "Base width (channels)", "int", 16, min=8, max=64),))
def fcn_simple(in_channels: int, num_classes: int, width: int = 16) -> nn.Module:
    return SimpleFCN(in_channels, num_classes, width)
