"""torchvision's DeepLab-v3 and LR-ASPP, built offline and adapted to return one logits tensor at input size."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models import segmentation

from engine.models.registry import Option, register
from engine.models.weights import ImageNetSource, set_in_channels


class SegmentationLogits(nn.Module):
    """torchvision segmentation nets return {"out": logits}; the zoo's contract is the logits tensor itself."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torchvision already resizes "out" to the input's H x W (bilinear), odd sizes included.
        return self.net(x)["out"]


def _build(factory, in_channels: int, num_classes: int, **kwargs) -> nn.Module:
    # weights=None AND weights_backbone=None: either one left at its default downloads from the internet.
    net = factory(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    return SegmentationLogits(set_in_channels(net, in_channels))


def _deeplab_backbone_weights(options: dict) -> ImageNetSource:
    # ImageNet weights exist for the backbone only; the torchvision backbone is the classifier minus its head.
    if options["backbone"] == "resnet50":
        return ImageNetSource("ResNet50_Weights", add="net.backbone.")
    return ImageNetSource("MobileNet_V3_Large_Weights", strip="features.", add="net.backbone.")


@register(name="deeplabv3", task="segmentation", title="DeepLab-v3", year=2017, pretrained=True,
          note="Atrous (dilated) convolutions keep feature maps large, and ASPP pools context at several "
               "dilation rates in parallel.",
          head=("net.classifier",), imagenet=_deeplab_backbone_weights,
          options=(Option("backbone", "Backbone", "choice", "mobilenet_v3_large",
                          choices=("mobilenet_v3_large", "resnet50"),
                          help="MobileNet-v3 (11 M weights) trains on a CPU; ResNet-50 (39 M) wants a GPU."),))
def deeplabv3(in_channels: int, num_classes: int, backbone: str = "mobilenet_v3_large") -> nn.Module:
    factory = segmentation.deeplabv3_resnet50 if backbone == "resnet50" else segmentation.deeplabv3_mobilenet_v3_large
    return _build(factory, in_channels, num_classes, aux_loss=False)


@register(name="lraspp", task="segmentation", title="LR-ASPP (MobileNet-v3)", year=2019, pretrained=True,
          note="Lite segmentation head from MobileNet-v3: cheap global attention over deep features plus one "
               "shallow skip for detail.",
          head=("net.classifier",),
          imagenet=ImageNetSource("MobileNet_V3_Large_Weights", strip="features.", add="net.backbone."))
def lraspp(in_channels: int, num_classes: int) -> nn.Module:
    return _build(segmentation.lraspp_mobilenet_v3_large, in_channels, num_classes)
