"""Builds a registered architecture: the registry says what it is, weights says where its weights come from."""
from __future__ import annotations

from typing import Any

from torch import nn

from engine.errors import UserError
from engine.models import weights
from engine.models.registry import get_spec, resolve_options
from engine.pretrain.library import resolve_encoder


def build_model(
    name: str,
    in_channels: int,
    num_classes: int,
    *,
    task: str | None = None,
    pretrained: str = "none",
    freeze_backbone: bool = False,
    options: dict[str, Any] | None = None,
) -> nn.Module:
    """Build a registered model; optionally load ImageNet weights, a user's file or a finished run's best weights
    ("run:RUN_ID"), a pre-trained encoder ("encoder:ID"), and freeze all but the head.

    `task` picks the entry when a name serves both tasks (mlp). When weights are loaded,
    ``model.weights_report`` (a pretrained.LoadReport) says which tensors were used.
    """
    spec = get_spec(name, task)
    if int(in_channels) != in_channels or in_channels < 1:
        raise UserError(f"Images must have at least one channel, not {in_channels}.")
    if int(num_classes) != num_classes or num_classes < 1:
        raise UserError(f"A model needs at least one output class, not {num_classes}.")
    opts = resolve_options(spec, options)
    model = spec.build(int(in_channels), int(num_classes), **opts)
    source = (pretrained or "none").strip()
    if source.lower() == "imagenet":
        model.weights_report = weights.load_imagenet(model, spec, opts)
    elif (run_id := weights.source_run_id(source)) is not None:
        model.weights_report = weights.load_run(model, spec, run_id, int(in_channels), int(num_classes))
    elif source.lower().startswith("encoder:"):
        # a pre-trained encoder: engine.pretrain resolves "encoder:ID" to its weights file
        model.weights_report = weights.load_file(model, resolve_encoder(source))
    elif source.lower() != "none":
        model.weights_report = weights.load_file(model, source)
    if freeze_backbone:
        weights.freeze_backbone(model, spec)
    return model
