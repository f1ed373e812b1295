"""Classic entries, in teaching order: the MLP baseline (for both tasks), LeNet-5, then the ImageNet line from
AlexNet onwards (classification)."""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn

from engine.models.registry import Option, register
from engine.models.weights import ImageNetSource, set_in_channels

# ---------------------------------------------------------------- written here

class MLP(nn.Module):
    """Fully connected baseline: every pixel is an unrelated input, so it cannot exploit spatial structure."""

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 256, grid: int = 32):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(grid)   # any image size becomes grid x grid, so the first layer is fixed
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * grid * grid, hidden), nn.ReLU(inplace=True), nn.Dropout(0.2),
            nn.Linear(hidden, hidden // 2), nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(hidden // 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(self.pool(x)))


class SegmentationMLP(nn.Module):
    """The seed lab's fully connected segmenter: the whole (pooled) image in, a coarse mask's logits out.

    Every output pixel has its own weights from every input pixel, so what is learnt in one place never carries
    over to another; with few images it learns the average mask, which is mostly background."""

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 256, grid: int = 32):
        super().__init__()
        self.num_classes, self.grid = num_classes, grid
        self.pool = nn.AdaptiveAvgPool2d(grid)   # any image size becomes grid x grid, so the layers are fixed
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * grid * grid, hidden), nn.ReLU(inplace=True))
        self.fc = nn.Linear(hidden, num_classes * grid * grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coarse = self.fc(self.body(self.pool(x))).view(-1, self.num_classes, self.grid, self.grid)
        # Back to the input's exact size (any H x W), as every segmentation entry answers.
        return F.interpolate(coarse, size=[x.shape[2], x.shape[3]], mode="bilinear", align_corners=False)


class LeNet5(nn.Module):
    """LeNet-5 (1998) as published: 5x5 convs, tanh, average-pool subsampling, 120-84 dense layers."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5), nn.Tanh(), nn.AvgPool2d(2),   # C1, S2
            nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2),            # C3, S4
            # LeNet saw 32x32 digits, where S4 is 5x5; pooling to 5x5 keeps the dense layers valid at any size.
            nn.AdaptiveAvgPool2d(5),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(),   # C5, F6
        )
        self.fc = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.classifier(self.features(x)))


class SeparableConv(nn.Sequential):
    """Depthwise 3x3 (one filter per channel, spatial only) then pointwise 1x1 (channels only), then BN."""

    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )


class XceptionBlock(nn.Module):
    """Residual block of separable convs; a strided 1x1 conv makes the shortcut fit when the block downsamples."""

    def __init__(self, cin: int, cout: int, convs: int = 2, downsample: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(convs):
            layers += [nn.ReLU(), SeparableConv(cin if i == 0 else cout, cout)]
        if downsample:
            layers.append(nn.MaxPool2d(3, stride=2, padding=1))
        self.body = nn.Sequential(*layers)
        self.shortcut = (nn.Identity() if cin == cout and not downsample else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=2 if downsample else 1, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class XceptionSmall(nn.Module):
    """Xception's entry/middle/exit flows at a fraction of the width (about 2.5 M parameters instead of 23 M)."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, middle_blocks: int = 2):
        super().__init__()
        w = width
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
        )
        self.entry = nn.Sequential(XceptionBlock(2 * w, 4 * w), XceptionBlock(4 * w, 8 * w),
                                   XceptionBlock(8 * w, 12 * w))
        self.middle = nn.Sequential(*[XceptionBlock(12 * w, 12 * w, convs=3, downsample=False)
                                      for _ in range(middle_blocks)])
        self.exit = nn.Sequential(
            XceptionBlock(12 * w, 16 * w),
            SeparableConv(16 * w, 24 * w), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.fc = nn.Linear(24 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.exit(self.middle(self.entry(self.stem(x)))))


@register(name="mlp", task="classification", title="MLP (baseline)", year=1986, default_size=64,
          note="Dense layers on raw pixels: the baseline that ignores where pixels are and so needs far more "
               "weights and data than a CNN.",
          head=("fc",),
          options=(Option("hidden", "Hidden units", "int", 256, min=16, max=2048),))
def mlp(in_channels: int, num_classes: int, hidden: int = 256) -> nn.Module:
    return MLP(in_channels, num_classes, hidden)


# Registered here, before every other segmentation entry, so it comes first in teaching order for that task too.
@register(name="mlp", task="segmentation", title="MLP (baseline)", year=1986, default_size=64,
          note="Dense layers map the whole image to a whole 32x32 mask: nothing is shared between places, so "
               "with few images it mostly predicts background (high pixel accuracy, Dice near 0).",
          head=("fc",),
          options=(Option("hidden", "Hidden units", "int", 256, min=16, max=2048),))
def mlp_segmentation(in_channels: int, num_classes: int, hidden: int = 256) -> nn.Module:
    return SegmentationMLP(in_channels, num_classes, hidden)


@register(name="lenet5", task="classification", title="LeNet-5", year=1998, default_size=64, min_size=16,
          note="First widely used CNN: shared convolution filters and subsampling, trained end to end by "
               "backpropagation.",
          head=("fc",))
def lenet5(in_channels: int, num_classes: int) -> nn.Module:
    return LeNet5(in_channels, num_classes)


# ---------------------------------------------------------------- torchvision (weights=None: never download)

def _torchvision(arch: str, in_channels: int, num_classes: int, **kwargs) -> nn.Module:
    return set_in_channels(tvm.get_model(arch, weights=None, num_classes=num_classes, **kwargs), in_channels)


@register(name="alexnet", task="classification", title="AlexNet", year=2012, min_size=64, pretrained=True,
          note="Deep CNN trained on GPUs with ReLU and dropout: won ImageNet 2012 by a wide margin and started "
               "the deep-learning era.",
          head=("classifier.6",), imagenet=ImageNetSource("AlexNet_Weights"))
def alexnet(in_channels: int, num_classes: int) -> nn.Module:
    return _torchvision("alexnet", in_channels, num_classes)


_VGG_BN = Option("batchnorm", "Batch normalisation", "bool", False,
                 help="Not in the 2014 original; makes training from scratch far more reliable.")


def _vgg_weights(depth: int):
    return lambda options: ImageNetSource(f"VGG{depth}_BN_Weights" if options["batchnorm"] else f"VGG{depth}_Weights")


def _vgg(depth: int, in_channels: int, num_classes: int, batchnorm: bool) -> nn.Module:
    return _torchvision(f"vgg{depth}_bn" if batchnorm else f"vgg{depth}", in_channels, num_classes)


@register(name="vgg11", task="classification", title="VGG-11", year=2014, pretrained=True,
          note="Depth from stacks of small 3x3 convolutions: two 3x3 layers see as far as one 5x5 with fewer "
               "weights and more non-linearity.",
          head=("classifier.6",), imagenet=_vgg_weights(11), options=(_VGG_BN,))
def vgg11(in_channels: int, num_classes: int, batchnorm: bool = False) -> nn.Module:
    return _vgg(11, in_channels, num_classes, batchnorm)


@register(name="vgg16", task="classification", title="VGG-16", year=2014, pretrained=True,
          note="The deeper VGG: 13 conv layers of 3x3 in five pooled stages; simple, popular, and heavy "
               "(about 134 M weights).",
          head=("classifier.6",), imagenet=_vgg_weights(16), options=(_VGG_BN,))
def vgg16(in_channels: int, num_classes: int, batchnorm: bool = False) -> nn.Module:
    return _vgg(16, in_channels, num_classes, batchnorm)


class GoogLeNetLogits(tvm.GoogLeNet):
    """torchvision's GoogLeNet returning the main logits only, in eager mode and when scripted alike."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(self._transform_input(x))[0]


class Inception3Logits(tvm.Inception3):
    """torchvision's Inception-v3 returning the main logits only, in eager mode and when scripted alike."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(self._transform_input(x))[0]


@register(name="googlenet", task="classification", title="GoogLeNet (Inception v1)", year=2014, pretrained=True,
          note="Inception modules run 1x1, 3x3 and 5x5 filters side by side, with 1x1 bottlenecks that cut the "
               "computation.",
          head=("fc",), imagenet=ImageNetSource("GoogLeNet_Weights"))
def googlenet(in_channels: int, num_classes: int) -> nn.Module:
    # The auxiliary classifiers only inject extra gradient during ImageNet training; returning one tensor keeps
    # every entry's output the same, and their weights in the ImageNet file are simply left out on loading.
    return set_in_channels(GoogLeNetLogits(num_classes=num_classes, aux_logits=False, init_weights=True), in_channels)


@register(name="inception_v3", task="classification", title="Inception-v3", year=2015, min_size=75,
          pretrained=True,
          note="Refined Inception: factorised convolutions (5x5 as two 3x3, nxn as 1xn then nx1), batch norm "
               "and label smoothing.",
          head=("fc",), imagenet=ImageNetSource("Inception_V3_Weights"))
def inception_v3(in_channels: int, num_classes: int) -> nn.Module:
    # aux_logits off for the same reason as GoogLeNet; transform_input stays off (it assumes RGB ImageNet input).
    return set_in_channels(Inception3Logits(num_classes=num_classes, aux_logits=False, init_weights=True), in_channels)


@register(name="resnet18", task="classification", title="ResNet-18", year=2015, pretrained=True,
          note="Residual blocks learn a correction added to an identity shortcut, so very deep networks still "
               "train.",
          head=("fc",), imagenet=ImageNetSource("ResNet18_Weights"))
def resnet18(in_channels: int, num_classes: int) -> nn.Module:
    return _torchvision("resnet18", in_channels, num_classes)


@register(name="resnet34", task="classification", title="ResNet-34", year=2015, pretrained=True,
          note="Same residual idea as ResNet-18 with twice the blocks: depth pays off because shortcuts keep "
               "gradients flowing.",
          head=("fc",), imagenet=ImageNetSource("ResNet34_Weights"))
def resnet34(in_channels: int, num_classes: int) -> nn.Module:
    return _torchvision("resnet34", in_channels, num_classes)


@register(name="resnet50", task="classification", title="ResNet-50", year=2015, pretrained=True,
          note="Bottleneck residual blocks (1x1 squeeze, 3x3, 1x1 expand) make a 50-layer net affordable.",
          head=("fc",), imagenet=ImageNetSource("ResNet50_Weights"))
def resnet50(in_channels: int, num_classes: int) -> nn.Module:
    return _torchvision("resnet50", in_channels, num_classes)


_DENSENET_OLD = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var))$")


def _densenet_legacy_keys(key: str) -> str:
    # torchvision's DenseNet files predate a rename: "denselayer1.norm.1.weight" is now "denselayer1.norm1.weight".
    return _DENSENET_OLD.sub(r"\1\2", key)


@register(name="densenet121", task="classification", title="DenseNet-121", year=2017, pretrained=True,
          note="Each layer receives the feature maps of all earlier layers in its block: strong feature reuse "
               "with few weights.",
          head=("classifier",), imagenet=ImageNetSource("DenseNet121_Weights", rename=_densenet_legacy_keys))
def densenet121(in_channels: int, num_classes: int) -> nn.Module:
    return _torchvision("densenet121", in_channels, num_classes)


@register(name="xception_small", task="classification", title="Xception (small)", year=2017,
          note="Depthwise-separable convolutions split spatial and cross-channel filtering, inside residual "
               "blocks; built here at small width.",
          head=("fc",),
          options=(Option("width", "Base width", "int", 32, min=8, max=64),))
def xception_small(in_channels: int, num_classes: int, width: int = 32) -> nn.Module:
    return XceptionSmall(in_channels, num_classes, width)


@register(name="mobilenet_v3_small", task="classification", title="MobileNet-v3 Small", year=2019,
          pretrained=True,
          note="Built for phones: inverted residuals of depthwise convs, squeeze-and-excitation and hard-swish, "
               "tuned by architecture search.",
          head=("classifier.3",), imagenet=ImageNetSource("MobileNet_V3_Small_Weights"))
def mobilenet_v3_small(in_channels: int, num_classes: int) -> nn.Module:
    return _torchvision("mobilenet_v3_small", in_channels, num_classes)


@register(name="mobilenet_v3_large", task="classification", title="MobileNet-v3 Large", year=2019,
          pretrained=True,
          note="The larger MobileNet-v3: same mobile building blocks, more accuracy for a few million weights.",
          head=("classifier.3",), imagenet=ImageNetSource("MobileNet_V3_Large_Weights"))
def mobilenet_v3_large(in_channels: int, num_classes: int) -> nn.Module:
    return _torchvision("mobilenet_v3_large", in_channels, num_classes)


@register(name="efficientnet_b0", task="classification", title="EfficientNet-B0", year=2019, pretrained=True,
          note="Scales depth, width and resolution together by one rule, from a searched mobile base network.",
          head=("classifier.1",), imagenet=ImageNetSource("EfficientNet_B0_Weights"))
def efficientnet_b0(in_channels: int, num_classes: int) -> nn.Module:
    return _torchvision("efficientnet_b0", in_channels, num_classes)
