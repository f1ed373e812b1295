"""U-Net (Ronneberger et al., 2015), configurable in depth, width, normalisation, upsampling and dropout."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.fcn import pad_to_multiple
from engine.models.registry import Option, register


def conv_block(cin: int, cout: int, batchnorm: bool, dropout: float = 0.0) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by (BatchNorm and) ReLU; padding keeps the size (the paper's were valid)."""
    layers: list[nn.Module] = []
    for i in range(2):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=not batchnorm)]
        layers += [nn.BatchNorm2d(cout)] if batchnorm else []
        layers += [nn.ReLU(inplace=True)]
        if i == 0 and dropout:
            layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


class Up(nn.Module):
    """Double the resolution, concatenate the encoder's map of that size (the skip), then a conv block."""

    def __init__(self, cin: int, cout: int, mode: str, batchnorm: bool, dropout: float):
        super().__init__()
        if mode == "transpose":
            self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)    # learned upsampling
        else:
            self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                    nn.Conv2d(cin, cout, 1))       # fixed upsampling, 1x1 to halve channels
        self.conv = conv_block(2 * cout, cout, batchnorm, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """Encoder of `depth` levels (width doubling at each pooling), mirrored decoder with skip connections."""

    def __init__(self, in_channels: int, num_classes: int, depth: int = 4, base: int = 16,
                 batchnorm: bool = True, up_mode: str = "transpose", dropout: float = 0.0):
        super().__init__()
        widths = [base * 2 ** level for level in range(depth)]
        # Dropout only in the two deepest levels, where the paper put it and where most weights are.
        drops = [dropout if level >= depth - 2 else 0.0 for level in range(depth)]
        self.down = nn.ModuleList(
            [conv_block(in_channels, widths[0], batchnorm, drops[0])]
            + [conv_block(widths[i - 1], widths[i], batchnorm, drops[i]) for i in range(1, depth)]
        )
        self.up = nn.ModuleList(
            [Up(widths[i], widths[i - 1], up_mode, batchnorm, drops[i - 1]) for i in range(depth - 1, 0, -1)]
        )
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        self.multiple = 2 ** (depth - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (h, w) = pad_to_multiple(x, self.multiple)
        skips: list[torch.Tensor] = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for i, up in enumerate(self.up):   # index loop, not zip(reversed(...)): keeps the model scriptable
            x = up(x, skips[-2 - i])
        return self.head(x)[..., :h, :w]


@register(name="unet", task="segmentation", title="U-Net", year=2015,
          note="Encoder-decoder with skip connections that hand fine detail from each encoder level to the "
               "decoder: precise masks from few images.",
          head=("up", "head"),   # "freeze backbone" trains the decoder; the encoder is the backbone
          options=(
              Option("depth", "Depth (levels)", "int", 4, min=2, max=5,
                     help="Each level halves the resolution and widens the view: about 44, 96, 200 px at depth 3, 4, 5."),
              Option("base", "Base width (channels)", "int", 16, min=8, max=64,
                     help="Channels at the first level, doubled at each level; cost grows with its square."),
              Option("batchnorm", "Batch normalisation", "bool", True),
              Option("up_mode", "Upsampling", "choice", "transpose", choices=("transpose", "bilinear"),
                     help="Transposed convolution learns the upsampling; bilinear is fixed and lighter."),
              Option("dropout", "Dropout (deepest levels)", "choice", 0.0, choices=(0.0, 0.1, 0.2, 0.3, 0.5)),
          ))
def unet(in_channels: int, num_classes: int, depth: int = 4, base: int = 16, batchnorm: bool = True,
         up_mode: str = "transpose", dropout: float = 0.0) -> nn.Module:
    return UNet(in_channels, num_classes, depth, base, batchnorm, up_mode, dropout)
