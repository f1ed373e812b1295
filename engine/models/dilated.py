"""Dilated context network (Yu & Koltun, 2016): context aggregated by 3x3 convs of exponentially growing dilation.

Receptive-field arithmetic. A k x k conv with dilation d at stride 1 widens the receptive field by (k - 1) * d:
    r = 1 + sum((k - 1) * d)
For the eight 3x3 layers with dilations 1, 1, 2, 4, 8, 16, 32, 1:
    r = 1 + 2 * (1 + 1 + 2 + 4 + 8 + 16 + 32 + 1) = 1 + 2 * 65 = 131
i.e. after each layer 3, 5, 9, 17, 33, 65, 129, 131 px. The weights grow linearly with depth while the field
grows exponentially, with no pooling, so the output keeps full resolution. The front-end's two 3x3 convs add
2 px each, so one output pixel of the whole network sees 135 x 135 input pixels.
"""
from __future__ import annotations

import torch
from torch import nn

from engine.models.registry import Option, register

CONTEXT_DILATIONS = (1, 1, 2, 4, 8, 16, 32, 1)


def receptive_field(convs: list[tuple[int, int]]) -> int:
    """Receptive field of stacked stride-1 convs given as (kernel, dilation) pairs."""
    return 1 + sum((kernel - 1) * dilation for kernel, dilation in convs)


class ContextModule(nn.Sequential):
    """3x3 convs with the dilations above; channel count kept, padding = dilation keeps the size."""

    def __init__(self, channels: int, dilations: tuple[int, ...] = CONTEXT_DILATIONS):
        layers: list[nn.Module] = []
        for d in dilations:
            layers += [nn.Conv2d(channels, channels, 3, padding=d, dilation=d), nn.ReLU(inplace=True)]
        super().__init__(*layers)
        self.identity_init()

    @torch.no_grad()
    def identity_init(self) -> None:
        # The paper found random init fails here and starts each layer as the identity: the module first passes
        # the front-end's features through unchanged and learns to add context.
        for conv in self.convs():
            conv.weight.zero_()
            conv.bias.zero_()
            index = torch.arange(conv.out_channels, device=conv.weight.device)
            conv.weight[index, index, 1, 1] = 1.0

    def convs(self) -> list[nn.Conv2d]:
        return [m for m in self if isinstance(m, nn.Conv2d)]

    def receptive_field(self) -> int:
        return receptive_field([(c.kernel_size[0], c.dilation[0]) for c in self.convs()])


class DilatedContextNet(nn.Module):
    """Small full-resolution front-end (two 3x3 conv+BN+ReLU), the context module, then a 1x1 classifier."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16):
        super().__init__()
        self.frontend = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        )
        self.context = ContextModule(width)
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.context(self.frontend(x)))


@register(name="dilated_context", task="segmentation", title="Dilated context network", year=2016,
          note="Dilated convolutions widen the view exponentially (131 px after eight 3x3 layers) without pooling "
               "or losing resolution.",
          head=("context", "head"),
          options=(Option("width", "Width (channels)", "int", 16, min=8, max=64,
                          help="Every layer runs at full resolution, so cost grows with the square of this."),))
def dilated_context(in_channels: int, num_classes: int, width: int = 16) -> nn.Module:
    return DilatedContextNet(in_channels, num_classes, width)
