"""CLI flags derived from the run-settings table (engine.config.SETTINGS): one flag per RunConfig field."""
from __future__ import annotations

import argparse
import json
from typing import Any

from engine.config import SETTINGS, RunConfig, Setting, default
from engine.errors import UserError


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


def add_run_settings(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; unset flags keep RunConfig's default (None here means 'not given')."""
    for s in SETTINGS:
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
    try:
        return RunConfig(**given)
    except TypeError as exc:
        raise UserError(f"Those run settings do not fit together: {exc}.") from exc
