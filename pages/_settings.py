"""Form widgets derived from the run-settings table (engine.config.SETTINGS): label, help, range and choices
come from the one declaration, so the Train page, the Search page and the CLI cannot disagree.

Widget keys follow one rule, `<form>_<field>` (plus `__<context>` when the widget depends on the task or the
architecture); tests use it to check that every RunConfig field has a widget."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import streamlit as st

from engine.config import BY_NAME, Setting, default  # noqa: F401 - pages use s.BY_NAME


def key_for(form: str, name: str, context: str = "") -> str:
    return f"{form}_{name}" + (f"__{context}" if context else "")


def help_text(setting: Setting) -> str:
    return setting.help + (f"\n\n{setting.teach}" if setting.teach else "")


def is_shown(setting: Setting, values: dict[str, Any]) -> bool:
    """Settings that matter only for some choice (momentum for SGD) are hidden otherwise."""
    if setting.shown_when is None:
        return True
    other, allowed = setting.shown_when
    return values.get(other, default(other)) in allowed


def widget(name: str, form: str, *, value: Any = None, context: str = "", where: Any = None,
           options: Sequence | None = None, titles: Callable[[Any], str] | dict | None = None,
           disabled: bool = False, placeholder: str | None = None, radio: bool = False) -> Any:
    """One widget for one setting, in `where` (a column or st). `options`/`titles` supply choices that depend
    on the dataset (architectures, losses, metrics); the table's own choices are used otherwise."""
    s = BY_NAME[name]
    where = where or st
    key = key_for(form, name, context)
    value = default(name) if value is None else value
    common = {"help": help_text(s), "key": key, "disabled": disabled}
    if s.kind == "bool":
        return where.checkbox(s.label, value=bool(value), **common)
    choices = list(options) if options is not None else list(s.choices)
    if choices:
        fmt = titles.get if isinstance(titles, dict) else titles or s.title
        index = choices.index(value) if value in choices else 0
        if radio:
            return where.radio(s.label, choices, index=index, format_func=fmt, horizontal=True, **common)
        return where.selectbox(s.label, choices, index=index, format_func=fmt, **common)
    if s.kind == "int":
        return int(where.number_input(s.label, min_value=int(s.low), max_value=int(s.high), value=int(value),
                                      step=1, **common))
    if s.kind == "float" and s.steps:
        steps = list(s.steps)
        nearest = min(steps, key=lambda v: abs(v - float(value)))
        return where.select_slider(s.label, steps, value=nearest, format_func=lambda v: f"{v:g}", **common)
    if s.kind == "float":
        step = 0.001 if s.high <= 1 else 0.01
        return float(where.slider(s.label, float(s.low), float(s.high), float(value), step, **common))
    if s.kind == "str":
        return where.text_input(s.label, value=str(value), placeholder=placeholder, **common)
    raise ValueError(f"{name}: a {s.kind} setting needs its own widget")


def widget_multiselect(name: str, form: str, options: Sequence, titles: Callable[[Any], str],
                       context: str = "", where: Any = None) -> list:
    """A list setting (augmentations): several of the given options."""
    s = BY_NAME[name]
    chosen = [v for v in default(name) if v in options]
    return (where or st).multiselect(s.label, list(options), default=chosen, format_func=titles,
                                     help=help_text(s), key=key_for(form, name, context))
