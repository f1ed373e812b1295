"""RunConfig: the one typed description of a training run, travelling UI → store → worker → Trainer."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from engine.errors import UserError

TASKS = ("classification", "segmentation")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "exponential", "step", "cosine", "onecycle")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class RunConfig:
    dataset_id: str
    arch: str
    task: str = ""                      # filled from the dataset when empty
    name: str = ""                      # optional label shown in the UI
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9               # SGD only
    schedule: str = "constant"
    decay_rate: float = 0.9             # exponential: lr * rate ** (step / decay_steps)
    decay_steps: int = 100
    step_size: int = 10                 # step schedule: epochs between drops
    gamma: float = 0.1                  # step schedule: factor per drop
    loss: str = ""                      # "" = task default (ce for classification, ce_dice for segmentation)
    class_weights: bool = False         # weight cross-entropy by inverse class frequency
    augment: list[str] = field(default_factory=list)
    augment_params: dict[str, dict[str, float]] = field(default_factory=dict)
    image_size: int = 128
    pretrained: str = "none"            # "none" | "imagenet" | path to a state-dict file
    freeze_backbone: bool = False
    model_options: dict[str, Any] = field(default_factory=dict)
    early_stopping: int = 0             # patience in epochs; 0 = off
    monitor: str = ""                   # metric for best checkpoint/early stopping; "" = task default
    seed: int = 0
    device: str = "auto"
    amp: bool = True                    # mixed precision, used on CUDA only
    preview_samples: int = 4            # validation images rendered each epoch

    def __post_init__(self) -> None:
        if not self.loss and self.task:
            self.loss = default_loss(self.task)
        if not self.monitor and self.task:
            self.monitor = default_monitor(self.task)

    def validate(self) -> "RunConfig":
        """Raise UserError with a readable sentence for any value that cannot work."""
        checks = [
            (self.task in TASKS, f"Task must be one of {', '.join(TASKS)}, not '{self.task}'."),
            (self.epochs >= 1, "Epochs must be at least 1."),
            (self.batch_size >= 1, "Batch size must be at least 1."),
            (0 < self.lr < 10, f"Learning rate {self.lr} is out of range; try a value like 0.001."),
            (self.optimizer in OPTIMIZERS, f"Optimizer must be one of {', '.join(OPTIMIZERS)}."),
            (self.schedule in SCHEDULES, f"Schedule must be one of {', '.join(SCHEDULES)}."),
            (self.device in DEVICES, f"Device must be one of {', '.join(DEVICES)}."),
            (16 <= self.image_size <= 1024, "Image size must be between 16 and 1024 pixels."),
            (self.weight_decay >= 0, "Weight decay cannot be negative."),
            (self.early_stopping >= 0, "Early-stopping patience cannot be negative."),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"Unknown run settings: {', '.join(unknown)}.")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        return cls.from_dict(json.loads(text))


def check_config(config: RunConfig) -> dict:
    """Every check a run must pass before it is queued (the Train page calls it to explain before launch).

    Fills the task from the dataset when empty; returns the dataset manifest."""
    from engine.data.dataset import load_manifest
    from engine.models.registry import get_spec, resolve_options
    manifest = load_manifest(config.dataset_id)
    if not config.task:
        config.task = manifest["task"]
        config.__post_init__()
    if config.task != manifest["task"]:
        raise UserError(f"This dataset is for {manifest['task']}, but the run is set up for {config.task}.")
    config.validate()
    spec = get_spec(config.arch)
    if spec.task != config.task:
        raise UserError(f"{spec.title} is a {spec.task} model, but this dataset is for {config.task}.")
    if config.image_size < spec.min_size:
        raise UserError(f"{spec.title} needs images of at least {spec.min_size} px; raise the image size.")
    if config.pretrained == "imagenet" and not spec.pretrained:
        raise UserError(f"There are no ImageNet weights for {spec.title}; train it from scratch.")
    resolve_options(spec, config.model_options)      # unknown or out-of-range model settings fail here, not later
    return manifest


def default_loss(task: str) -> str:
    return "ce_dice" if task == "segmentation" else "ce"


def default_monitor(task: str) -> str:
    return "dice" if task == "segmentation" else "accuracy"
