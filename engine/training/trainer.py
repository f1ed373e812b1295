"""Trainer: one RunConfig in, a trained model out. The loop trains and announces events; handlers do the rest."""
from __future__ import annotations

import json
import math
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.config import RunConfig
from engine.data.dataset import load_split
from engine.device import pick_device
from engine.errors import UserError
from engine.metrics import ClassificationMeter, SegmentationMeter
from engine.models.checkpoints import RESUME_KEYS, load_checkpoint, not_a_checkpoint, save_checkpoint
from engine.models.network import IMAGENET_MEAN, IMAGENET_STD, build_network
from engine.models.weights import source_normalisation, source_run_id
from engine.preflight import EMPTY_VALIDATION, check_config, check_mask_classes
from engine.tasks import LOWER_IS_BETTER
from engine.training.augment import build_pipeline
from engine.training.events import Event, Events
from engine.training.losses import build_loss, class_weights_from_counts
from engine.training.stops import TrainingStopped


DEVICE_DATA_SHARE = 0.25             # the training set moves to the GPU when it needs under this share of free memory
WEIGHTS_NOTE = "weights.json"        # in the run folder: what the weight load kept (engine.runs.start_from reads it)


@dataclass
class TrainState:
    epoch: int = 0                    # epochs completed
    step: int = 0                     # optimizer steps taken
    best_value: float | None = None
    best_epoch: int = 0
    best_metrics: dict[str, float] = field(default_factory=dict)
    last_metrics: dict[str, float] = field(default_factory=dict)
    bad_epochs: int = 0               # epochs since the monitored metric last improved
    should_stop: bool = False
    stop_reason: str = ""
    train_seconds: float = 0.0        # wall clock of completed epochs (see end_epoch), over resumes too


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def normalisation_for(config: RunConfig, images: torch.Tensor) -> tuple[list[float], list[float]]:
    """What pretrained weights were trained with (ImageNet's statistics, or a source run's own normalisation),
    else the train split's own."""
    channels = images.shape[1]
    if (run_id := source_run_id(config.pretrained)) is not None:    # the inputs the loaded features were trained on
        return source_normalisation(run_id, channels)
    if config.pretrained != "none":
        if channels == 3:
            return IMAGENET_MEAN, IMAGENET_STD
        return [float(np.mean(IMAGENET_MEAN))] * channels, [float(np.mean(IMAGENET_STD))] * channels
    sample = images[: min(len(images), 512)].float()
    mean = sample.mean(dim=(0, 2, 3))
    std = sample.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return mean.tolist(), std.tolist()


def check_share_classes(labels: np.ndarray, classes: list[str], fraction: float) -> None:
    """Refuse a share of the training split that lost a class (the full split was checked before queueing)."""
    missing = [name for i, name in enumerate(classes) if not np.any(labels == i)]
    if missing:
        names = ", ".join(f"'{name}'" for name in missing)
        raise UserError(f"{fraction:.0%} of the training split holds no image of {names}, so the model could never "
                        "learn it; use a larger share of the training split.")


def build_optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                               nesterov=config.momentum > 0)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(config: RunConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """All schedules step once per optimizer step, so they resume exactly from a checkpoint."""
    total = max(1, config.epochs * steps_per_epoch)
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total)
    factors = {
        "constant": lambda s: 1.0,
        # as in the classic TF exponential_decay: lr · rate^(step / decay_steps)
        "exponential": lambda s: config.decay_rate ** (s / max(1, config.decay_steps)),
        "step": lambda s: config.gamma ** ((s // steps_per_epoch) // max(1, config.step_size)),
        "cosine": lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)),
    }
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors[config.schedule])


class Trainer:
    """Trains one model on one dataset; emits the Event members FIT_START, STEP_END, EPOCH_END, FIT_END."""

    def __init__(self, config: RunConfig, run_dir: Path, events: Events | None = None) -> None:
        manifest = check_config(config)      # the same checks a run passes before it is queued
        self.info = {key: manifest[key] for key in ("task", "channels", "classes", "num_classes")}
        self.info["mask_levels"] = manifest.get("mask_levels") or {}     # grey-level masks, for prediction
        self.config = config
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.events = events or Events()
        self.state = TrainState()
        self.device = pick_device(config.device)
        self.segmentation = config.task == "segmentation"
        self._load_data()
        seed_everything(config.seed)
        mean, std = normalisation_for(config, self.train_images)
        self.model = build_network(config, self.info, mean, std).to(self.device, memory_format=torch.channels_last)
        self.weights_message = self._record_weights()
        self.optimizer = build_optimizer(config, self.model)
        self.steps_per_epoch = math.ceil(len(self.train_images) / config.batch_size)
        self.scheduler = build_scheduler(config, self.optimizer, self.steps_per_epoch)
        self.loss_fn = self._build_loss()
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.augmenter = self._build_augmenter()
        self.augment_on_device = self.device.type == "cuda"    # the GPU data path (bench measures both)
        self._place_training_data()

    # ---- set-up ---------------------------------------------------------------------------------------
    def _load_data(self) -> None:
        size = self.config.image_size
        folds = dict(folds=self.config.folds, fold=self.config.fold)     # cross-validation: this run's fold
        train = load_split(self.config.dataset_id, "train", size, **folds, train_fraction=self.config.train_fraction)
        val = load_split(self.config.dataset_id, "val", size, **folds)
        if len(train.images) == 0:
            raise UserError("The training split is empty; upload more images or change the split.")
        if len(val.images) == 0:    # scoring on the training images would report memorisation as skill
            raise UserError(EMPTY_VALIDATION)
        if self.segmentation:
            check_mask_classes(train.targets, self.info["classes"])
        elif self.config.train_fraction < 1.0:
            check_share_classes(train.targets, self.info["classes"], self.config.train_fraction)
        # Keep training data as float32 in memory when it fits: the per-batch cast otherwise costs throughput.
        as_float = train.images.nbytes * 2 < 2 * 1024**3
        self.train_images = torch.from_numpy(train.images.astype(np.float32) if as_float else train.images)
        self.train_targets = torch.from_numpy(train.targets.astype(np.int64))
        self.val_images = torch.from_numpy(val.images.astype(np.float32))
        self.val_targets = torch.from_numpy(val.targets.astype(np.int64))
        self.val_keys = val.keys
        self.train_keys = train.keys

    def _place_training_data(self) -> None:
        """The GPU data path: on CUDA the training set moves to the GPU once when it fits in a share of the free
        memory, so each batch is gathered (and augmented, torchvision v2 transforms run on CUDA tensors) there
        instead of on the CPU in this process, which feeds a fast GPU too slowly; a set too large for that stays
        in pinned host memory, copied per batch without blocking. On a CPU nothing moves."""
        if self.device.type != "cuda":
            return
        free, _ = torch.cuda.mem_get_info(self.device)
        if self.train_images.nbytes + self.train_targets.nbytes < DEVICE_DATA_SHARE * free:
            self.train_images = self.train_images.to(self.device)
            self.train_targets = self.train_targets.to(self.device)
        else:
            self.train_images = self.train_images.pin_memory()
            self.train_targets = self.train_targets.pin_memory()

    def _record_weights(self) -> str:
        """What the weight load kept, in one sentence: in the run folder (weights.json) and the run's log."""
        report = getattr(self.model.net, "weights_report", None)
        if report is None:
            return ""
        message = report.summary()
        record = {"source": self.config.pretrained, "message": message, "loaded": len(report.loaded),
                  "skipped": report.skipped, "untouched": len(report.untouched)}
        (self.run_dir / WEIGHTS_NOTE).write_text(json.dumps(record, indent=1))
        print(f"Weights: {message}", file=sys.stderr, flush=True)        # the worker's train.log
        return message

    def _build_loss(self):
        weights = None
        if self.config.class_weights:
            k = self.info["num_classes"]
            counts = torch.bincount(self.train_targets.flatten(), minlength=k)[:k].tolist()
            weights = class_weights_from_counts(counts).to(self.device)
        return build_loss(self.config.loss, self.config.task, self.info["num_classes"], weights)

    def _build_augmenter(self):
        if not self.config.augment:
            return None
        return build_pipeline(self.config.augment, self.config.augment_params)

    def _amp_dtype(self) -> torch.dtype | None:
        if self.device.type != "cuda" or not self.config.amp:
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def new_meter(self, with_hd95: bool = False):
        if self.segmentation:
            return SegmentationMeter(self.info["num_classes"], with_hd95=with_hd95)
        return ClassificationMeter(self.info["num_classes"])

    # ---- loop -----------------------------------------------------------------------------------------
    def fit(self, start_epoch: int = 0) -> TrainState:
        self.events.emit(Event.FIT_START, trainer=self)
        epoch = start_epoch
        self._epoch_mark = time.perf_counter()
        while epoch < self.config.epochs:           # a re-plan (change_epochs) may change the length on the way
            epoch += 1
            train_metrics = self.train_epoch(epoch)
            self.end_epoch(epoch, train_metrics, self._epoch_mark)
            if self.state.should_stop:
                break
        self.events.emit(Event.FIT_END, trainer=self)
        return self.state

    def change_epochs(self, epochs: int) -> None:
        """Train to `epochs` instead, more or fewer (handlers/replan.py): the schedule is rebuilt for the new length
        and moved to the current step, so a cosine schedule still reaches zero on the last epoch."""
        self.config.epochs = epochs
        self.scheduler = build_scheduler(self.config, self.optimizer, self.steps_per_epoch)
        self.scheduler.last_epoch = self.state.step - 1
        self.scheduler.step()

    def end_epoch(self, epoch: int, train_metrics: dict[str, float], started: float) -> None:
        """Validation, the best epoch, the time limit, then EPOCH_END (a distributed run: on rank 0 only).

        An epoch's time runs from the previous epoch's end to this one's, so it includes what the previous epoch's
        handlers did (checkpoints, previews): the time limit and an Auto re-plan count the run's wall clock, not
        only its steps (benchmarks/auto.md: counting steps alone, a 5-minute run of 2.1-3.3-s epochs planned
        119 epochs and had time for 98)."""
        val_metrics = self.evaluate(self.val_images, self.val_targets)
        self.state.epoch = epoch
        self.state.last_metrics = val_metrics
        self._track_best(val_metrics)
        self._epoch_mark = time.perf_counter()
        seconds = self._epoch_mark - started
        self.state.train_seconds += seconds
        self._check_time_limit(seconds)
        self.events.emit(Event.EPOCH_END, trainer=self, epoch=epoch, train=train_metrics, val=val_metrics,
                         seconds=seconds)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The training images' order in an epoch, drawn from (seed, epoch) alone: every rank of a distributed run
        draws the same one (each takes its share of every batch), and a resumed run the same as an unbroken one."""
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.train_images), generator=generator)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self._agree()                   # a distributed run: rank 0 may have been cancelled at FIT_START
        self.model.train()
        meter = self.new_meter()
        losses: list[torch.Tensor] = []
        for index, share in self.epoch_batches(epoch):
            images, targets = self._batch(index)
            loss, logits = self.step(images, targets)
            loss = self._batch_loss(loss, share)
            losses.append(loss)
            meter.update(logits.detach(), targets)
            self.state.step += 1
            self.events.emit(Event.STEP_END, trainer=self, epoch=epoch, step=self.state.step, loss=loss)
            self._agree()
            if self.state.should_stop:
                break
        values = torch.stack(losses).float() if losses else torch.zeros(1)
        if not torch.isfinite(values).all():
            raise TrainingStopped(self._nan_message())
        metrics = meter.compute()
        metrics["loss"] = float(values.mean())
        return metrics

    def epoch_batches(self, epoch: int):
        """(the images this process trains on in each step, their share of the step's batch), in the epoch's
        order. A batch of one breaks BatchNorm: it is skipped, which loses < 1 sample per epoch."""
        order = self.epoch_order(epoch)
        bs = self.config.batch_size
        for first in range(0, len(order), bs):
            index = order[first:first + bs]
            if len(index) < 2 and len(order) > 1:
                continue
            yield index, 1.0

    def _batch_loss(self, loss: torch.Tensor, share: float) -> torch.Tensor:
        """The step's loss over its whole batch (one process: its own)."""
        return loss

    def _agree(self) -> None:
        """A point where the processes of a distributed run agree to go on (one process: nothing to agree)."""

    def _batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One training batch on the device: gathered where the training set lives, augmented on the device
        (augment_on_device, the default on CUDA) or on the CPU before the copy."""
        index = index.to(self.train_images.device)
        images = self.train_images[index].float()
        targets = self.train_targets[index]
        if not self.augment_on_device:
            images, targets = self._augment(images, targets)
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        if self.augment_on_device:
            images, targets = self._augment(images, targets)
        return images.contiguous(memory_format=torch.channels_last), targets

    def _augment(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.augmenter is None:
            return images, targets
        images, masks = self.augmenter.batch(images, targets if self.segmentation else None)
        return images, (masks.long() if self.segmentation else targets)

    def step(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext())
        try:
            with autocast:
                logits = self.model(images)
                loss = self.loss_fn(logits, targets)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
        except torch.OutOfMemoryError as exc:
            raise TrainingStopped(self._oom_message()) from exc
        except RuntimeError as exc:
            if "out of memory" in str(exc).lower():
                raise TrainingStopped(self._oom_message()) from exc
            raise
        return loss.detach(), logits

    @torch.no_grad()
    def evaluate(self, images: torch.Tensor, targets: torch.Tensor, full: bool = False) -> dict[str, Any]:
        """Validation metrics; `full` adds the slow ones (95% Hausdorff) for final reports."""
        self.model.eval()
        meter = self.new_meter(with_hd95=full)
        total, count = 0.0, 0
        bs = max(self.config.batch_size, 32)
        for first in range(0, len(images), bs):
            x = images[first:first + bs].to(self.device).contiguous(memory_format=torch.channels_last)
            y = targets[first:first + bs].to(self.device)
            with (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()):
                logits = self.model(x)
                total += float(self.loss_fn(logits, y)) * len(x)
            count += len(x)
            meter.update(logits.float(), y)
        metrics: dict[str, Any] = meter.compute(intervals=True)     # with n and 95 % intervals
        metrics["loss"] = total / max(1, count)
        if not self.segmentation:
            metrics["confusion"] = meter.confusion().tolist()
        return metrics

    @torch.no_grad()
    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        x = images.to(self.device).contiguous(memory_format=torch.channels_last)
        return self.model(x).float().cpu()

    def _track_best(self, metrics: dict[str, float]) -> None:
        name = self.config.monitor
        if name not in metrics:
            raise UserError(f"The metric '{name}' is not computed for {self.config.task}; choose another one.")
        value = metrics[name]
        lower = name in LOWER_IS_BETTER
        best = self.state.best_value
        improved = value == value and (best is None or (value < best if lower else value > best)
                                       or (value == best and self._lower_loss(metrics)))
        if improved:
            self.state.best_value, self.state.best_epoch = value, self.state.epoch
            self.state.best_metrics = dict(metrics)
            self.state.bad_epochs = 0
        else:
            self.state.bad_epochs += 1
        patience = self.config.early_stopping
        if patience and self.state.bad_epochs >= patience:
            self.state.should_stop = True
            self.state.stop_reason = f"Early stopping: {name} did not improve for {patience} epochs."

    def _lower_loss(self, metrics: dict[str, float]) -> bool:
        """A tie on the monitored metric goes to the epoch with the lower validation loss: on a small validation
        set accuracy saturates (6 images: 1.00 from epoch 4 to 31 in benchmarks/auto.md) while the loss still says
        which model is more certain, and keeping the first epoch to reach the tie kept the least trained one."""
        loss, best_loss = metrics.get("loss"), self.state.best_metrics.get("loss")
        return (self.config.monitor != "loss" and loss is not None and best_loss is not None
                and math.isfinite(loss) and loss < best_loss)

    def _check_time_limit(self, epoch_seconds: float) -> None:
        """Stop when another epoch like the last one would pass the time limit (RunConfig.time_limit_minutes)."""
        limit = self.config.time_limit_minutes * 60
        if not limit or self.state.should_stop or self.state.epoch >= self.config.epochs:
            return
        if self.state.train_seconds + epoch_seconds > limit:
            self.state.should_stop = True
            self.state.stop_reason = (
                f"Time limit: stopped after epoch {self.state.epoch} of {self.config.epochs} at "
                f"{self.state.train_seconds / 60:.1f} of {self.config.time_limit_minutes:g} minutes (another epoch "
                f"takes about {epoch_seconds:.0f} s); the best epoch is kept.")

    # ---- messages -------------------------------------------------------------------------------------
    def _nan_message(self) -> str:
        return (f"The loss became NaN/infinite at learning rate {self.config.lr:g}; lower the learning rate "
                "(e.g. 10× smaller) or switch to Adam.")

    def _oom_message(self) -> str:
        return (f"Out of memory with batch size {self.config.batch_size} and {self.config.image_size}-px images; "
                "lower the batch size or the image size.")

    # ---- checkpoints ----------------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.state.epoch,
            "step": self.state.step,
            "best_value": self.state.best_value,
            "best_epoch": self.state.best_epoch,
            "best_metrics": self.state.best_metrics,
            "bad_epochs": self.state.bad_epochs,
            "train_seconds": self.state.train_seconds,
            "config": self.config.to_dict(),
            "dataset": self.info,
            "rng": torch.get_rng_state(),
        }

    def save(self, name: str) -> Path:
        path = self.run_dir / name
        save_checkpoint(self.checkpoint(), path)        # atomic; a failed write is one sentence
        return path

    def restore(self, path: Path) -> int:
        """Load a 'last' checkpoint; returns the number of epochs already completed."""
        ckpt = load_checkpoint(path, self.run_dir.name, RESUME_KEYS, map_location=self.device)
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.scaler.load_state_dict(ckpt["scaler"])
            torch.set_rng_state(ckpt["rng"].cpu())
        except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as err:
            raise not_a_checkpoint(path, self.run_dir.name, "its weights or training state do not fit this run") \
                from err
        self.state = TrainState(epoch=ckpt["epoch"], step=ckpt["step"], best_value=ckpt["best_value"],
                                best_epoch=ckpt["best_epoch"], best_metrics=ckpt["best_metrics"],
                                bad_epochs=ckpt["bad_epochs"], train_seconds=float(ckpt.get("train_seconds") or 0.0))
        return ckpt["epoch"]
