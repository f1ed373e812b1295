"""The checks a run passes before it is queued and again before it trains: dataset, task, architecture, sizes."""
from __future__ import annotations

from engine.config import RunConfig
from engine.data.dataset import load_manifest
from engine.errors import UserError
from engine.models.registry import DEFAULT_ARCH, get_spec, resolve_options
from engine.models.weights import imagenet_status


def check_config(config: RunConfig) -> dict:
    """Every check a run must pass before it is queued (the Train page calls it to explain before launch).

    Fills the task, architecture, loss and monitor from the dataset when empty; returns the dataset manifest."""
    if not config.dataset_id:
        raise UserError("Choose a dataset to train on.")
    manifest = load_manifest(config.dataset_id)
    if not config.task:
        config.task = manifest["task"]
        config.__post_init__()
    if config.task != manifest["task"]:
        raise UserError(f"This dataset is for {manifest['task']}, but the run is set up for {config.task}.")
    if not config.arch:
        config.arch = DEFAULT_ARCH[config.task]
    config.validate()
    spec = get_spec(config.arch)
    if spec.task != config.task:
        raise UserError(f"{spec.title} is a {spec.task} model, but this dataset is for {config.task}.")
    if config.image_size < spec.min_size:
        raise UserError(f"{spec.title} needs images of at least {spec.min_size} px; raise the image size.")
    if config.pretrained == "imagenet" and not spec.pretrained:
        raise UserError(f"There are no ImageNet weights for {spec.title}; train it from scratch.")
    options = resolve_options(spec, config.model_options)   # unknown or out-of-range model settings fail here
    if config.pretrained == "imagenet" and not (status := imagenet_status(spec, options)).available:
        raise UserError(status.message)                    # before launch, not 20 s into the run
    return manifest
