"""LightboxModel: normalisation baked into the network, the unit that is checkpointed, predicted with and exported."""
from __future__ import annotations

import torch
from torch import nn

from engine.config import RunConfig
from engine.models.builder import build_model

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class Normalize(nn.Module):
    """Per-channel standardisation baked into the model, so exported models take [0,1] images."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class LightboxModel(nn.Module):
    """Normalisation + network."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


def build_network(config: RunConfig, info: dict, mean: list[float], std: list[float]) -> LightboxModel:
    """The run's architecture for a dataset's channels and classes, with its weights source and freezing."""
    net = build_model(config.arch, info["channels"], info["num_classes"], task=config.task or info.get("task"),
                      pretrained=config.pretrained, freeze_backbone=config.freeze_backbone,
                      options=config.model_options)
    return LightboxModel(net, mean, std)
