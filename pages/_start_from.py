"""The Train page's extra "Start from" choices: one of your finished runs ("run:ID") and, where pre-training made
them, pre-trained encoders ("encoder:ID"). Only what the actor may use, and only runs of this architecture."""
from __future__ import annotations

import streamlit as st

from engine.accounts.actor import Actor
from engine.models import get_spec
from engine.pretrain import library as encoders
from engine.runs import start_from
from engine.tasks import METRIC_TITLES

RUN, ENCODER = "run", "encoder"
KINDS = (RUN, ENCODER)


def _encoders(actor: Actor | None, arch: str) -> list[dict]:
    return [e for e in encoders.list_encoders(actor) if e.get("arch") == arch]


def starts(actor: Actor | None, task: str, arch: str) -> dict[str, str]:
    """The extra radio choices (value → title) that have something to offer for this architecture."""
    out = {}
    if start_from.candidates(actor, task, arch):
        out[RUN] = "One of your finished runs"
    if _encoders(actor, arch):
        out[ENCODER] = "A pre-trained encoder"
    return out


def run_title(run: dict, actor: Actor | None) -> str:
    """"Your run abc123 · U-Net · Dice 0.81 · baseline"."""
    metric = run.get("best_metric") or ""
    value = (run.get("best") or {}).get(metric, run.get("best_value"))
    score = f" · {METRIC_TITLES.get(metric, metric)} {value:.2f}" if isinstance(value, (int, float)) else ""
    name = f" · {run['name']}" if run.get("name") else ""
    owner = "Your run" if actor is not None and run.get("owner") == actor.name else "Run"
    return f"{owner} {run['id']} · {get_spec(run['arch'], run['task']).title}{score}{name}"


def choose(kind: str, actor: Actor | None, task: str, arch: str) -> tuple[str, str | None]:
    """(the RunConfig.pretrained value, a problem sentence or None) for the chosen kind of start."""
    if kind == RUN:
        runs = {r["id"]: r for r in start_from.candidates(actor, task, arch)}
        run_id = st.selectbox("Run to start from", list(runs), key=f"train_start_run__{arch}",
                              format_func=lambda i: run_title(runs[i], actor),
                              help="Its best checkpoint: layers whose names and shapes match load; the output "
                                   "layer is rebuilt when the classes differ, the first layer adapted when the "
                                   "channels differ. The run will say what it kept.")
        st.caption("The new run sees images normalised as this run saw them, so the loaded features fit.")
        return start_from.value_for(run_id), None
    found = {e["id"]: e for e in _encoders(actor, arch)}
    encoder_id = st.selectbox("Pre-trained encoder", list(found), key=f"train_start_encoder__{arch}",
                              format_func=lambda i: f"{found[i].get('name') or i} · {i}")
    return f"{encoders.PREFIX}{encoder_id}", None
