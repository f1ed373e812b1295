"""Which device computes: the GPU when there is one (or when asked), the CPU otherwise."""
from __future__ import annotations

import torch

from engine.errors import UserError


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("A GPU was requested but none is available here; choose 'auto' or 'cpu'.")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def gpu_count() -> int:
    return torch.cuda.device_count()


def device_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
