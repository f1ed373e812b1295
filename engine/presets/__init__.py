"""Presets: whole sets of run settings chosen for a dataset, each choice explained (engine.presets.auto)."""
from engine.presets.auto import BUDGETS, Preset, apply_preset, auto_settings

PRESETS = ("auto",)

__all__ = ["BUDGETS", "PRESETS", "Preset", "apply_preset", "auto_settings"]
