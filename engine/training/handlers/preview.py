"""Renders a few fixed validation images with their predictions to samples/epoch_NNN.png after each epoch."""
from __future__ import annotations

from engine.training.events import Event, Events
from engine.visualize.images import classification_panel, segmentation_panel


class PreviewRenderer:
    def __init__(self, count: int) -> None:
        self.count = count

    def attach(self, events: Events) -> None:
        events.on(Event.EPOCH_END, self.on_epoch)

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
