"""Handlers that listen to the Trainer: store logging, cancel checks, checkpoints, sample previews."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from engine import store


class RunCancelled(Exception):
    """Raised at a step boundary when the user asked the run to stop."""


class RunPruned(Exception):
    """Raised after an epoch when a hyperparameter search decides this trial is not worth finishing."""


def scalar_items(metrics: dict) -> list[tuple[str, float]]:
    return [(k, float(v)) for k, v in metrics.items() if isinstance(v, (int, float))]


class StoreLogger:
    """Writes step losses and epoch metrics to the store in small batches and honours cancel requests."""

    def __init__(self, run_id: str, flush_seconds: float = 1.0) -> None:
        self.run_id = run_id
        self.flush_seconds = flush_seconds
        self.pending: list[tuple[int, int, torch.Tensor]] = []
        self.last_flush = time.monotonic()

    def attach(self, events) -> None:
        events.on("step_end", self.on_step)
        events.on("epoch_end", self.on_epoch)

    def on_step(self, trainer, epoch: int, step: int, loss: torch.Tensor) -> None:
        self.pending.append((epoch, step, loss))    # a tensor: reading it now would sync the GPU every step
        if time.monotonic() - self.last_flush >= self.flush_seconds:
            self.flush(trainer)

    def flush(self, trainer) -> None:
        self.last_flush = time.monotonic()
        if self.pending:
            values = torch.stack([loss for _, _, loss in self.pending]).float().cpu().tolist()
            rows = [(e, s, "train", "loss", v) for (e, s, _), v in zip(self.pending, values)]
            self.pending.clear()
            store.log_metrics(self.run_id, rows)
        total = trainer.config.epochs * trainer.steps_per_epoch
        store.update_run(self.run_id, progress=min(1.0, trainer.state.step / total))
        run = store.get_run(self.run_id)
        if run and run["cancel_requested"]:
            raise RunCancelled()

    def on_epoch(self, trainer, epoch: int, train: dict, val: dict, seconds: float) -> None:
        self.flush(trainer)
        step = trainer.state.step
        rows = [(epoch, step, "train", f"epoch_{k}" if k == "loss" else k, v) for k, v in scalar_items(train)]
        rows += [(epoch, step, "val", k, v) for k, v in scalar_items(val)]
        rows += [(epoch, step, "train", "lr", trainer.optimizer.param_groups[0]["lr"]),
                 (epoch, step, "train", "epoch_seconds", seconds)]
        store.log_metrics(self.run_id, rows)
        state = trainer.state
        run = store.get_run(self.run_id)
        store.update_run(self.run_id, epoch=epoch, best_metric=trainer.config.monitor, best_value=state.best_value,
                         best_epoch=state.best_epoch, best=state.best_metrics,
                         train_seconds=(run["train_seconds"] or 0.0) + seconds)


class Checkpointer:
    """last.pt after every epoch (for resume), best.pt when the monitored metric improves."""

    def attach(self, events) -> None:
        events.on("epoch_end", self.on_epoch)

    def on_epoch(self, trainer, epoch: int, **_) -> None:
        if trainer.state.best_epoch == epoch:
            trainer.save("best.pt")
        trainer.save("last.pt")


class PreviewRenderer:
    """Renders a few fixed validation images with their predictions to samples/epoch_NNN.png."""

    def __init__(self, count: int) -> None:
        self.count = count

    def attach(self, events) -> None:
        events.on("epoch_end", self.on_epoch)

    def on_epoch(self, trainer, epoch: int, **_) -> None:
        if self.count <= 0:
            return
        images = trainer.val_images[: self.count]
        targets = trainer.val_targets[: self.count]
        logits = trainer.predict_logits(images)
        if trainer.segmentation:
            picture = segmentation_panel(images, targets, logits.argmax(1))
        else:
            picture = classification_panel(images, targets, logits.softmax(1), trainer.info["classes"])
        folder = trainer.run_dir / "samples"
        folder.mkdir(exist_ok=True)
        tmp = folder / f".epoch_{epoch:03d}.png.tmp"
        picture.save(tmp, format="PNG")
        tmp.replace(folder / f"epoch_{epoch:03d}.png")


def to_rgb(image: torch.Tensor) -> np.ndarray:
    """(C,H,W) float [0,1] → (H,W,3) uint8."""
    array = image.float().clamp(0, 1).numpy()
    array = np.repeat(array, 3, axis=0) if array.shape[0] == 1 else array[:3]
    return (array.transpose(1, 2, 0) * 255).astype(np.uint8)


PALETTE = np.array([[0, 0, 0], [255, 64, 64], [64, 200, 255], [255, 210, 0], [160, 90, 255], [0, 220, 120]],
                   dtype=np.float32)


def overlay(rgb: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend label colours over an RGB image; background (0) stays untouched."""
    colours = PALETTE[1:][(labels.astype(np.int64) - 1) % (len(PALETTE) - 1)]
    mixed = rgb.astype(np.float32)
    fg = labels > 0
    mixed[fg] = (1 - alpha) * mixed[fg] + alpha * colours[fg]
    return mixed.astype(np.uint8)


def segmentation_panel(images, targets, preds) -> Image.Image:
    rows = []
    for image, target, pred in zip(images, targets, preds):
        rgb = to_rgb(image)
        rows.append(np.concatenate([rgb, overlay(rgb, target.numpy()), overlay(rgb, pred.numpy())], axis=1))
    return Image.fromarray(np.concatenate(rows, axis=0))


def classification_panel(images, targets, probs, classes: list[str]) -> Image.Image:
    tiles = []
    for image, target, prob in zip(images, targets, probs):
        tile = Image.fromarray(to_rgb(image)).resize((160, 160))
        canvas = Image.new("RGB", (160, 196), "white")
        canvas.paste(tile, (0, 0))
        pred = int(prob.argmax())
        colour = (0, 140, 0) if pred == int(target) else (200, 0, 0)
        draw = ImageDraw.Draw(canvas)
        draw.text((4, 162), f"true: {classes[int(target)]}", fill=(0, 0, 0))
        draw.text((4, 178), f"pred: {classes[pred]} {float(prob[pred]):.2f}", fill=colour)
        tiles.append(np.asarray(canvas))
    return Image.fromarray(np.concatenate(tiles, axis=1))


def latest_preview(run_dir: Path) -> Path | None:
    found = sorted((run_dir / "samples").glob("epoch_*.png"))
    return found[-1] if found else None
