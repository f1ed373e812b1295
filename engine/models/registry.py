"""The model zoo's registry: one entry per architecture, a builder plus what the UI and trainer need to know."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from engine.errors import UserError
from engine.tasks import TASKS


@dataclass(frozen=True)
class Option:
    """One user-facing setting of a configurable model, rendered by the UI as a widget."""

    name: str
    label: str
    kind: str                       # "int" | "bool" | "choice"
    default: Any
    choices: tuple = ()             # kind "choice"
    min: int | None = None          # kind "int"
    max: int | None = None
    help: str = ""


@dataclass(frozen=True)
class ModelSpec:
    name: str                       # registry key, e.g. "resnet18"
    task: str                       # "classification" | "segmentation"
    title: str                      # shown in the UI, e.g. "ResNet-18"
    note: str                       # one line: what the architecture introduced
    build: Callable[..., nn.Module]  # build(in_channels, num_classes, **options) -> nn.Module
    min_size: int = 32              # smallest input side (px) that works
    default_size: int = 128         # sensible image size for this arch on a small CPU
    pretrained: bool = False        # ImageNet weights exist in torchvision for it
    year: int | None = None
    options: tuple = ()             # tuple[Option, ...]
    # Module path(s) of the part that stays trainable under "freeze backbone" (prefixes of parameter names).
    head: tuple[str, ...] = ()
    # Where ImageNet weights come from: an ImageNetSource, or a function of the options returning one (or None).
    imagenet: Any = None

    def default_options(self) -> dict[str, Any]:
        return {opt.name: opt.default for opt in self.options}


# Keyed by (task, name): one name may serve both tasks with a builder each (the MLP baseline classifies and
# segments), while every entry keeps one task, one builder and its own teaching note.
MODELS: dict[tuple[str, str], ModelSpec] = {}


def register(**meta: Any) -> Callable:
    """Decorator: add the decorated builder to MODELS under (meta["task"], meta["name"])."""
    def add(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        spec = ModelSpec(build=build, **meta)
        if spec.task not in TASKS:
            raise ValueError(f"{spec.name}: task must be one of {TASKS}")
        if (spec.task, spec.name) in MODELS:
            raise ValueError(f"{spec.task} model {spec.name!r} registered twice")
        MODELS[(spec.task, spec.name)] = spec
        return build
    return add


# What a new run starts from: proven, quick to train on a CPU, and strong enough on real scans. The lists stay in
# teaching order (MLP and FCN first), which is not the order of what to try first.
DEFAULT_ARCH = {"classification": "resnet18", "segmentation": "unet"}


def models_for(task: str) -> list[ModelSpec]:
    """Entries for one task, in teaching order (the order they are registered in)."""
    return [spec for (spec_task, _), spec in MODELS.items() if spec_task == task]


def model_names() -> list[str]:
    """Every registered name once, in registration order."""
    return list(dict.fromkeys(name for _, name in MODELS))


def get_spec(name: str, task: str | None = None) -> ModelSpec:
    """The entry called `name` for `task`. Without a task, a name that serves both tasks (mlp) gives the first one
    registered (classification): pass the task wherever it is known."""
    found = [spec for (_, spec_name), spec in MODELS.items() if spec_name == name]
    if not found:
        raise UserError(f"Unknown model '{name}'; choose one of: {', '.join(model_names())}.")
    if task is None:
        return found[0]
    for spec in found:
        if spec.task == task:
            return spec
    raise UserError(f"{found[0].title} is a {found[0].task} model, but this dataset is for {task}.")


def resolve_options(spec: ModelSpec, options: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults merged with the given options, each checked against its Option; UserError when one cannot work."""
    given = dict(options or {})
    known = {opt.name: opt for opt in spec.options}
    unknown = sorted(set(given) - set(known))
    if unknown:
        allowed = ", ".join(known) or "none"
        raise UserError(f"{spec.title} has no setting {', '.join(unknown)}; its settings are: {allowed}.")
    return {name: _check_option(spec, opt, given.get(name, opt.default)) for name, opt in known.items()}


def _check_option(spec: ModelSpec, opt: Option, value: Any) -> Any:
    where = f"{spec.title} setting '{opt.label}'"
    if opt.kind == "bool":
        if isinstance(value, bool):
            return value
        raise UserError(f"{where} must be on or off, not {value!r}.")
    if opt.kind == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise UserError(f"{where} must be a whole number, not {value!r}.")
        value = int(value)
        if (opt.min is not None and value < opt.min) or (opt.max is not None and value > opt.max):
            raise UserError(f"{where} must be between {opt.min} and {opt.max}, not {value}.")
        return value
    if opt.kind == "choice":
        for choice in opt.choices:   # JSON may turn 0.0 into 0: compare by value, return the canonical choice
            if value == choice and type(value) is not bool:
                return choice
        raise UserError(f"{where} must be one of {', '.join(map(str, opt.choices))}, not {value!r}.")
    raise ValueError(f"unknown option kind {opt.kind!r}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def parameter_count(name: str, in_channels: int = 1, num_classes: int = 2, options: dict | None = None,
                    task: str | None = None) -> int:
    """Number of parameters of an entry, built on the meta device (no memory, no init cost) and cached."""
    return _parameter_count(name, in_channels, num_classes, tuple(sorted((options or {}).items())), task)


@functools.lru_cache(maxsize=256)
def _parameter_count(name: str, in_channels: int, num_classes: int, options: tuple, task: str | None) -> int:
    spec = get_spec(name, task)
    with torch.device("meta"):
        model = spec.build(in_channels, num_classes, **resolve_options(spec, dict(options)))
    return count_parameters(model)
