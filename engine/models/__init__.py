"""The model zoo: every architecture Lightbox can train, registered by name with its teaching metadata.

Importing this package registers all entries; the order of the imports below is the teaching order (so import
sorters must leave this file alone).
"""
# isort: skip_file
# ruff: noqa: I001
from engine.models import classic, fcn, unet, dilated, torchvision_seg  # noqa: F401  (registration, in this order)
from engine.models.builder import build_model
from engine.models.registry import (
    DEFAULT_ARCH,
    MODELS,
    ModelSpec,
    Option,
    count_parameters,
    get_spec,
    model_names,
    models_for,
    parameter_count,
    register,
)

__all__ = ["DEFAULT_ARCH", "MODELS", "ModelSpec", "Option", "build_model", "count_parameters", "get_spec", "model_names",
           "models_for", "parameter_count", "register"]
