"""RunConfig: the one typed description of a training run, travelling UI → store → worker → Trainer.

Each field is declared once, with its Setting (label, help, teaching note, range, choices). The CLI flags
(engine.cli.options), the Train and Search forms (pages/_settings.py) and validation are derived from SETTINGS.
Imports nothing heavy: the CLI's queue commands and the store read it without loading torch."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from engine.errors import UserError
from engine.tasks import TASKS, default_loss, default_monitor, monitor_choices

OPTIMIZER_TITLES = {"adam": "Adam", "adamw": "AdamW (decoupled weight decay)", "sgd": "SGD with momentum"}
SCHEDULE_TITLES = {"constant": "Constant", "exponential": "Exponential decay", "step": "Step decay",
                   "cosine": "Cosine annealing", "onecycle": "One-cycle"}
DEVICE_TITLES = {"auto": "Auto (GPU if any)", "cpu": "CPU", "cuda": "GPU (CUDA)"}
OPTIMIZERS, SCHEDULES, DEVICES = tuple(OPTIMIZER_TITLES), tuple(SCHEDULE_TITLES), tuple(DEVICE_TITLES)
LEARNING_RATES = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)   # steps of about ×3: a log scale


@dataclass(frozen=True)
class Setting:
    """Everything the CLI, the forms and validation need to know about one RunConfig field."""

    label: str                          # form label; the CLI help starts with it
    help: str                           # one sentence: what it does
    group: str                          # where the Train page shows it: data, model, augmentation, optimisation, length
    teach: str = ""                     # one sentence a student should know about it
    low: float | None = None            # numbers: inclusive range
    high: float | None = None
    log: bool = False                   # numbers: a log scale (search ranges, sliders)
    steps: tuple = ()                   # numbers: the values a slider offers
    choices: tuple[str, ...] = ()       # fixed choices ...
    titles: dict | None = None          # ... and how they are shown
    choices_from: str = ""              # choices that depend on the dataset: models, losses, metrics, augmentations
    shown_when: tuple[str, tuple] | None = None     # (other field, its values) when this one matters
    flag: str = ""                      # CLI flag when not --field-name
    required: bool = False
    name: str = ""                      # filled from the field
    kind: str = ""                      # filled from the default: int, float, bool, str, list, dict

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def title(self, value: Any) -> str:
        return (self.titles or {}).get(value, str(value))


def _setting(default: Any, label: str, help: str, group: str, **meta: Any) -> Any:
    spec = Setting(label=label, help=help, group=group, **meta)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"setting": spec})
    return field(default=default, metadata={"setting": spec})


@dataclass
class RunConfig:
    dataset_id: str = _setting("", "Dataset", "The ingested dataset to train on (its id).", "data",
                               flag="--dataset", required=True, choices_from="datasets")
    arch: str = _setting("", "Architecture", "The network to train; empty = the task's default.", "model",
                         choices_from="models",
                         teach="Each architecture introduced one idea; the note under the choice says which.")
    task: str = _setting("", "Task", "classification or segmentation; empty = the dataset's own task.", "data",
                         choices=TASKS)
    name: str = _setting("", "Run name (optional)", "A label shown in the UI next to the run id.", "run")
    preset: dict = _setting({}, "Preset", "The preset that filled this run's settings, its time budget and one "
                            "reason per choice; empty = none (CLI: --preset auto [--budget-minutes N]).", "run",
                            flag="--preset",
                            teach="Auto chooses from the data's fingerprint; any setting you change still wins.")
    pretrained: str = _setting("none", "Start from", "none (random weights), imagenet, or a weights file.", "model",
                               teach="Starting from ImageNet weights helps most when you have few images.")
    freeze_backbone: bool = _setting(False, "Freeze the backbone", "Train only the head; keep the rest as loaded.",
                                     "model", teach="Freezing needs fewer images but adapts less to scans.")
    model_options: dict = _setting({}, "Architecture settings", "Settings of the architecture, e.g. U-Net depth "
                                   "(CLI: JSON, e.g. '{\"depth\": 3}').", "model", choices_from="model_options")
    augment: list = _setting([], "Augmentations (applied to training images only, jointly to image and mask)",
                             "Random changes to training images (CLI: comma-separated names).",
                             "augmentation", choices_from="augmentations",
                             teach="Augmentation shows the network more variety than the data holds; "
                                   "it helps most when images are few.")
    augment_params: dict = _setting({}, "Augmentation settings", "Strength of each augmentation (CLI: JSON, e.g. "
                                    "'{\"rotate\": {\"degrees\": 10}}').", "augmentation",
                                    choices_from="augment_params")
    loss: str = _setting("", "Loss", "What training minimises; empty = the task's default.", "optimisation",
                         choices_from="losses",
                         teach="Dice-based losses help when the structure is small against the background.")
    class_weights: bool = _setting(False, "Weight classes by rarity", "Rare classes count more in the loss.",
                                   "optimisation", teach="Helps with imbalanced data.")
    optimizer: str = _setting("adam", "Optimizer", "How weights are updated from gradients.", "optimisation",
                              choices=OPTIMIZERS, titles=OPTIMIZER_TITLES)
    lr: float = _setting(1e-3, "Learning rate", "Step size of the optimizer.", "optimisation", low=1e-6, high=1.0,
                         log=True, steps=LEARNING_RATES, flag="--lr",
                         teach="Too high and the loss jumps or becomes NaN; too low and little happens for many "
                               "epochs. 0.001 suits Adam; SGD often wants 0.01–0.1.")
    momentum: float = _setting(0.9, "Momentum", "SGD only: how much of the last update carries over.",
                               "optimisation", low=0.0, high=0.999, shown_when=("optimizer", ("sgd",)))
    weight_decay: float = _setting(0.0, "Weight decay", "Pulls weights towards zero (L2 regularisation).",
                                   "optimisation", low=0.0, high=0.1, steps=(0.0, 1e-5, 1e-4, 1e-3, 1e-2, 5e-2),
                                   teach="A little weight decay can reduce overfitting.")
    schedule: str = _setting("constant", "Learning-rate schedule", "How the learning rate changes during the run.",
                             "optimisation", choices=SCHEDULES, titles=SCHEDULE_TITLES)
    decay_rate: float = _setting(0.9, "Decay rate", "Exponential: the rate is multiplied by this every 'decay "
                                 "steps' optimizer steps.", "optimisation", low=0.5, high=0.999,
                                 shown_when=("schedule", ("exponential",)))
    decay_steps: int = _setting(100, "Decay steps", "Exponential: optimizer steps per decay.", "optimisation",
                                low=1, high=100_000, shown_when=("schedule", ("exponential",)))
    step_size: int = _setting(10, "Epochs between drops", "Step schedule: epochs between drops.", "optimisation",
                              low=1, high=1000, shown_when=("schedule", ("step",)))
    gamma: float = _setting(0.1, "Factor per drop", "Step schedule: the rate is multiplied by this at each drop.",
                            "optimisation", low=0.01, high=0.99, shown_when=("schedule", ("step",)))
    epochs: int = _setting(10, "Epochs", "Passes over the training images.", "length", low=1, high=1000)
    batch_size: int = _setting(16, "Batch size", "Images per optimizer step (at least 2: batch normalisation "
                               "compares the images of each step).", "length", low=2, high=1024,
                               teach="Bigger batches give smoother gradients but fewer steps per epoch.")
    image_size: int = _setting(128, "Image size (px)", "Images are resized to a square of this side.", "length",
                               low=16, high=1024)
    early_stopping: int = _setting(0, "Early stopping patience", "Stop after this many epochs without improvement "
                                   "(0 = off).", "length", low=0, high=1000)
    time_limit_minutes: float = _setting(0.0, "Time limit (minutes)", "Training stops after the last epoch that "
                                         "fits in this much time (0 = no limit); the best epoch is kept.", "length",
                                         low=0.0, high=10_000.0,
                                         steps=(0.0, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 240.0, 480.0),
                                         teach="Epochs set how long a run may train; a time limit makes sure it "
                                               "ends on time on a busy machine.")
    monitor: str = _setting("", "Best epoch by", "The validation metric that picks the best epoch (on a tie, the "
                            "epoch with the lower validation loss); empty = the task's default.", "length", choices_from="metrics")
    folds: int = _setting(0, "Cross-validation folds", "0 = one train/validation split; K ≥ 2 trains K runs, "
                          "each validating on a different K-th of the patients.", "validation", low=0, high=20,
                          teach="With few patients one validation split is a lottery; K folds give a mean and a "
                                "spread, and every patient is validated exactly once.")
    fold: int = _setting(0, "Fold", "Which fold this run validates on (1..K; set by Lightbox for each run of a "
                         "cross-validation).", "validation", low=0, high=20)
    train_fraction: float = _setting(1.0, "Share of the training split used", "Train on this share of the "
                                     "training split, whole patients (groups) at a time; validation and test stay "
                                     "as they are.", "data", low=0.05, high=1.0,
                                     steps=(0.05, 0.1, 0.25, 0.5, 0.75, 1.0),
                                     teach="Training on a part of the data shows whether more images would help: "
                                           "the learning curve.")
    seed: int = _setting(0, "Random seed", "The same seed and settings give the same run.", "hardware",
                         low=0, high=2**31 - 1)
    device: str = _setting("auto", "Device", "Where to train.", "hardware", choices=DEVICES, titles=DEVICE_TITLES)
    devices: int = _setting(1, "Devices", "Train one run on N devices at once (data-parallel: each takes a share of "
                            "every batch). GPUs when the machine has several; on a CPU, N processes share the cores "
                            "— for testing, rarely faster.", "hardware", low=1, high=8)
    amp: bool = _setting(True, "Mixed precision on GPU", "Faster GPU training in 16-bit floats (GPU only).",
                         "hardware")
    preview_samples: int = _setting(4, "Preview images", "Validation images drawn with predictions each epoch.",
                                    "hardware", low=0, high=16)

    def __post_init__(self) -> None:
        if not self.loss and self.task:
            self.loss = default_loss(self.task)
        if not self.monitor and self.task:
            self.monitor = default_monitor(self.task)

    def validate(self) -> "RunConfig":
        """Raise UserError with a readable sentence for any value that cannot work."""
        if self.batch_size == 1:            # before the range check: say why, not only what
            raise UserError("Batch size must be at least 2: batch normalisation, in every network here, compares "
                            "the images of each step, so a step of one image cannot train; use 2 or more.")
        for setting in SETTINGS:
            check_value(setting, getattr(self, setting.name))
        if self.task not in TASKS:
            raise UserError(f"Task must be one of {', '.join(TASKS)}, not '{self.task}'.")
        if self.devices > 1 and self.batch_size < 2 * self.devices:     # BatchNorm: two images per device and step
            raise UserError(f"Batch size {self.batch_size} is too small for {self.devices} devices: each takes a "
                            f"share of every batch and needs at least 2 images; raise the batch size to at least "
                            f"{2 * self.devices} or use fewer devices.")
        if self.monitor not in monitor_choices(self.task):
            raise UserError(f"'{self.monitor}' is not measured for {self.task}; "
                            f"choose one of {', '.join(monitor_choices(self.task))}.")
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


def _kind(default: Any) -> str:
    return type(default).__name__


SETTINGS: list[Setting] = []
for _f in fields(RunConfig):
    _default = _f.default_factory() if callable(_f.default_factory) else _f.default
    SETTINGS.append(Setting(**{**_f.metadata["setting"].__dict__, "name": _f.name, "kind": _kind(_default)}))
BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
DEFAULTS = RunConfig()


def default(name: str) -> Any:
    return getattr(DEFAULTS, name)


def check_value(setting: Setting, value: Any) -> Any:
    """The value if it fits the setting's kind, range and fixed choices; else UserError naming the setting."""
    where = setting.label
    if setting.kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserError(f"{where} must be a number, not {value!r}.")
        if setting.kind == "int" and int(value) != value:
            raise UserError(f"{where} must be a whole number, not {value!r}.")
        if (setting.low is not None and value < setting.low) or (setting.high is not None and value > setting.high):
            raise UserError(f"{where} must be between {setting.low:g} and {setting.high:g}, not {value:g}.")
    elif setting.kind == "bool" and not isinstance(value, bool):
        raise UserError(f"{where} must be on or off, not {value!r}.")
    elif setting.kind == "str" and not isinstance(value, str):
        raise UserError(f"{where} must be text, not {value!r}.")
    elif setting.kind == "list" and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise UserError(f"{where} must be a list of names, not {value!r}.")
    elif setting.kind == "dict" and not isinstance(value, dict):
        raise UserError(f"{where} must be a set of named values, not {value!r}.")
    if setting.choices and setting.kind == "str" and value and value not in setting.choices:
        raise UserError(f"{where} must be one of {', '.join(setting.choices)}, not '{value}'.")
    return value
