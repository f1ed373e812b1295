"""CLI flags derived from the run-settings table (engine.config.SETTINGS): one flag per RunConfig field."""
from __future__ import annotations

import argparse
import json
from typing import Any

from engine.accounts import access
from engine.classroom.assignments import preset_limits
from engine.config import SETTINGS, RunConfig, Setting, default
from engine.data.manifest import load_manifest
from engine.errors import UserError
from engine.presets import apply_preset, auto_settings


def _json_object(setting: Setting):
    def parse(text: str) -> dict:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise argparse.ArgumentTypeError(f"{setting.cli_flag} takes a JSON object, e.g. '{{\"depth\": 3}}'")
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"{setting.cli_flag} takes a JSON object, not {text!r}")
        return value
    return parse


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _help(setting: Setting) -> str:
    value = default(setting.name)
    shown = "" if value in ("", [], {}) else f" (default {value})"
    return f"{setting.help}{shown}"


PRESET_NAMES = ("auto",)       # engine.presets.PRESETS, named here so the CLI starts without numpy and scipy


def _add_preset_flags(parser: argparse.ArgumentParser, setting: Setting) -> None:
    """The preset is recorded as a dict, but chosen by name: --preset auto [--budget-minutes N]."""
    parser.add_argument(setting.cli_flag, dest=setting.name, default=None, choices=list(PRESET_NAMES),
                        help="auto: choose every setting you do not give from the dataset's fingerprint, this "
                             "device and the time budget, each with a one-sentence reason (stored with the run)")
    parser.add_argument("--budget-minutes", dest="budget_minutes", type=float, default=None,
                        help="with --preset auto: about how long the run may take (default 15)")


def add_run_settings(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; unset flags keep RunConfig's default (None here means 'not given')."""
    for s in SETTINGS:
        if s.name == "preset":
            _add_preset_flags(parser, s)
            continue
        kw: dict[str, Any] = {"dest": s.name, "default": None, "help": _help(s)}
        if s.kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif s.kind in ("int", "float"):
            kw["type"] = int if s.kind == "int" else float
        elif s.kind == "list":
            kw["type"] = _names
        elif s.kind == "dict":
            kw["type"] = _json_object(s)
        elif s.choices:
            kw["choices"] = list(s.choices)
        if s.required:
            kw["required"] = True
        parser.add_argument(s.cli_flag, **kw)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    given = {s.name: getattr(args, s.name) for s in SETTINGS if getattr(args, s.name, None) is not None}
    if isinstance(given.get("name"), str):
        given["name"] = given["name"].strip()
    given = _with_preset(args, given)
    try:
        return RunConfig(**given)
    except TypeError as exc:
        raise UserError(f"Those run settings do not fit together: {exc}.") from exc


def _with_preset(args: argparse.Namespace, given: dict[str, Any]) -> dict[str, Any]:
    """--preset auto fills every setting not given on the command line; the given ones win."""
    name, budget = given.pop("preset", None), getattr(args, "budget_minutes", None)
    if name is None:
        if budget is not None:
            raise UserError("--budget-minutes goes with --preset auto; add --preset auto or leave it out.")
        return given
    manifest = load_manifest(given.get("dataset_id", ""))
    if getattr(args, "actor", None) is not None:      # no fingerprint of a dataset the user may not see
        access.check_dataset(args.actor, manifest["id"], manifest)
    preset = auto_settings(manifest, device=given.get("device", "auto"),
                           budget_minutes=15 if budget is None else budget,
                           limits=preset_limits(getattr(args, "actor", None), manifest["id"]))
    return apply_preset(given, preset)
