"""Learning curves on the pages: the Train page's "Learning curve (4 runs)" button, and Compare's plot of the
validation score against the number of training images, with the sentence on whether more data would help."""
from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from engine.accounts.actor import Actor
from engine.config import RunConfig
from engine.runs import learning_curve
from engine.tasks import METRIC_TITLES
from pages import _widgets as w

SHARES = ", ".join(f"{f:.0%}" for f in learning_curve.FRACTIONS)


def curve_button(where, config: RunConfig, problem: str | None, actor: Actor | None) -> None:
    """Queue the same settings on 10/25/50/100 % of the training split, validated on the same images."""
    clicked = where.button(f"Learning curve ({len(learning_curve.FRACTIONS)} runs)", disabled=bool(problem),
                           key="train_curve",
                           help=f"Queue these settings on {SHARES} of the training split (whole patients at a "
                                "time), all validated on the same images; Compare then plots the score against the "
                                "number of training images and says whether more images would likely help.")
    if not clicked:
        return
    with w.shows_errors("Queueing the learning curve"):
        _, run_ids = learning_curve.create_curve(config, **({} if actor is None else {"actor": actor}))
        st.success(f"Queued {len(run_ids)} runs ({', '.join(run_ids)}) on {SHARES} of the training split. When "
                   "they finish, the **Compare** page plots the learning curve.")


def curve_figure(summary: dict, title: str) -> go.Figure:
    points = [p for p in summary["points"] if p["value"] is not None]
    x = [p["train_images"] if p["train_images"] is not None else p["fraction"] for p in points]
    counted = all(p["train_images"] is not None for p in points)
    figure = go.Figure(go.Scatter(
        x=x, y=[p["value"] for p in points], mode="lines+markers", name=title,
        text=[f"{p['fraction']:.0%} of training · run {p['run_id']}" for p in points],
        hovertemplate="%{x} → %{y:.3f}<br>%{text}<extra></extra>"))
    figure.update_layout(title=f"Validation {title} vs training set size", height=320, margin={"t": 40, "b": 40},
                         xaxis_title="Training images" if counted else "Share of the training split",
                         yaxis_title=f"Validation {title}")
    return figure


def show_curves(runs: list[dict]) -> None:
    """Each learning curve among `runs` (runs tagged 'lc:'): its plot and its sentence."""
    curves = learning_curve.curves_of(runs)
    if not curves:
        return
    st.subheader("Learning curve")
    st.caption("The same settings trained on growing shares of the training split (whole patients, each share "
               "inside the next) and validated on the same images: the score against the number of training "
               "images shows whether more labelled data would likely help.")
    for curve_id, members in curves.items():
        summary = learning_curve.summary(curve_id, members)
        title = METRIC_TITLES.get(summary["metric"], summary["metric"] or "score")
        done = sum(p["value"] is not None for p in summary["points"])
        name = (members[0].get("name") or curve_id).split(" · ")[0]
        st.markdown(f"**{w.as_text(name)}** · {done} of {len(summary['points'])} runs scored")
        if done:
            st.plotly_chart(curve_figure(summary, title), key=f"learning_curve_{curve_id}")
        st.info(w.as_text(summary["verdict"]), icon=":material/insights:")
