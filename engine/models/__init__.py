"""The model zoo: every architecture Lightbox can train, registered by name with its teaching metadata.

Importing this package registers all entries; the order of the imports below is the teaching order.
"""
from engine.models import classic, dilated, fcn, torchvision_seg, unet  # noqa: E402,F401  (registration)
from engine.models.builder import build_model
from engine.models.registry import (
    DEFAULT_ARCH,
    MODELS,
    ModelSpec,
    Option,
    count_parameters,
    get_spec,
    models_for,
    parameter_count,
    register,
)

__all__ = ["DEFAULT_ARCH", "MODELS", "ModelSpec", "Option", "build_model", "count_parameters", "get_spec", "models_for",
           "parameter_count", "register"]
