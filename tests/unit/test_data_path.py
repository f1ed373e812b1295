"""The GPU data path (Trainer._place_training_data / _batch): on CUDA the training set lives on the GPU and batches
are augmented there; on a CPU nothing moves. Augmenting after the copy must give exactly the batch that augmenting
before it gives (same random draws), so the path is a speed choice only. The CUDA test runs where a GPU is."""
from __future__ import annotations

import pytest
import torch

from engine.config import RunConfig
from engine.training.trainer import Trainer


def _trainer(tmp_path, dataset_id: str, device: str = "cpu") -> Trainer:
    config = RunConfig(dataset_id=dataset_id, arch="unet", epochs=1, batch_size=4, image_size=32, device=device,
                       augment=["hflip", "rotate", "zoom", "brightness"], preview_samples=0,
                       model_options={"depth": 2, "base": 8})
    return Trainer(config, tmp_path / "run", None)


def _batch(trainer: Trainer, on_device: bool, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    trainer.augment_on_device = on_device
    torch.manual_seed(seed)
    return trainer._batch(torch.arange(4))


def test_augmenting_on_the_device_gives_the_batch_augmenting_on_the_host_gives(tmp_path, tiny_segmentation):
    trainer = _trainer(tmp_path, tiny_segmentation)
    assert trainer.augment_on_device is False                         # a CPU run: the host path, unchanged
    assert trainer.train_images.device.type == "cpu" and not trainer.train_images.is_pinned()
    host_images, host_masks = _batch(trainer, on_device=False)
    device_images, device_masks = _batch(trainer, on_device=True)
    plain = trainer.train_images[:4].float()
    assert not torch.equal(host_images, plain)                        # augmentation happened
    assert torch.equal(host_images, device_images) and torch.equal(host_masks, device_masks)
    assert device_images.is_contiguous(memory_format=torch.channels_last) and device_masks.dtype == torch.int64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_the_training_set_lives_on_the_gpu_and_batches_are_augmented_there(tmp_path, tiny_segmentation):
    trainer = _trainer(tmp_path, tiny_segmentation, device="cuda")
    assert trainer.augment_on_device is True
    assert trainer.train_images.device.type == "cuda" and trainer.train_targets.device.type == "cuda"
    images, masks = _batch(trainer, on_device=True)
    assert images.device.type == "cuda" and masks.device.type == "cuda"
    assert set(masks.unique().tolist()) <= set(range(trainer.info["num_classes"]))   # nearest-resampled labels
    host_images, host_masks = _batch(trainer, on_device=False)
    assert torch.allclose(images, host_images, atol=1e-4)             # same draws; kernels may differ in rounding
    assert (masks != host_masks).float().mean() < 0.01
    trainer.fit()                                                     # and a whole epoch trains on that path
    assert trainer.state.epoch == 1
