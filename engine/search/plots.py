"""Which of Optuna's plots a study can draw yet, and if not, why: one entry per plot, read by the Search page.

Optuna's plot functions rarely raise on a young study: they log a warning and return an empty figure. So each
entry says up front what it needs (finished trials, searched settings that took two values…) and gives a
sentence instead of a blank picture.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import optuna
import plotly.graph_objects as go
from optuna import visualization as vis
from optuna.trial import TrialState

log = logging.getLogger("lightbox.search")


@dataclass(frozen=True)
class Facts:
    """What the plots depend on, read once from the study."""

    complete: int             # finished trials with a value
    params: list[str]         # settings searched in those trials
    varied: list[str]         # of those, the ones that took at least two different values
    searched: list[str]       # settings searched in any trial so far (running ones too)
    reported: int             # trials (of any state) that reported at least one epoch


@dataclass(frozen=True)
class PlotSpec:
    title: str
    note: str                                            # what the picture tells you, one line
    missing: Callable[[Facts], str | None]               # why it cannot be drawn yet; None when it can
    draw: Callable[[optuna.Study, Facts, str], go.Figure]


def facts(study: optuna.Study) -> Facts:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    params = sorted({name for t in complete for name in t.params})
    varied = [p for p in params if len({repr(t.params[p]) for t in complete if p in t.params}) >= 2]
    trials = study.get_trials(deepcopy=False)
    searched = sorted({name for t in trials for name in t.params})
    reported = sum(bool(t.intermediate_values) for t in trials)
    return Facts(len(complete), params, varied, searched, reported)


def fingerprint(study: optuna.Study) -> tuple:
    """Changes whenever a plot could change: a trial starts, finishes or reports an epoch."""
    return tuple((t.number, t.state.name, len(t.intermediate_values)) for t in study.get_trials(deepcopy=False))


def _needs_finished(count: int) -> Callable[[Facts], str | None]:
    def missing(f: Facts) -> str | None:
        if f.complete >= count:
            return None
        if count == 1:
            return "Appears when the first trial finishes."
        return f"Needs {count} finished trials; {f.complete} so far."
    return missing


def _needs_params(f: Facts, count: int, reason: str) -> str | None:
    return None if len(f.varied) >= count else reason


def _importances_missing(f: Facts) -> str | None:
    return _needs_finished(2)(f) or _needs_params(
        f, 1, "Needs a searched setting that took two different values in finished trials.")


def _contour_missing(f: Facts) -> str | None:
    if 0 < len(f.searched) < 2:
        return "Needs at least two searched settings; this search varies only one (give a second setting " \
               "more than one choice)."
    return _needs_finished(2)(f) or _needs_params(
        f, 2, "Needs two searched settings that each took two different values in finished trials.")


def _importances(study: optuna.Study, f: Facts, target: str) -> go.Figure:
    # PED-ANOVA: Optuna's default (fANOVA) needs scikit-learn, which Lightbox does not install; this one is
    # plain NumPy and deterministic, so the bars do not jump each time the page redraws the same trials.
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    return vis.plot_param_importances(study, evaluator=evaluator, params=f.varied, target_name=target)


PLOTS: list[PlotSpec] = [
    PlotSpec("Optimization history", "Each dot is a finished trial; the line is the best value found so far.",
             _needs_finished(1), lambda s, f, t: vis.plot_optimization_history(s, target_name=t)),
    PlotSpec("Parameter importances",
             "How much each setting decides which trials end up best (PED-ANOVA; rough with few trials).",
             _importances_missing, _importances),
    PlotSpec("Parallel coordinates", "One line per finished trial through its settings; colour is the result.",
             lambda f: _needs_finished(2)(f) or _needs_params(f, 1, "Needs at least one searched setting."),
             lambda s, f, t: vis.plot_parallel_coordinate(s, params=f.params, target_name=t)),
    PlotSpec("Slice", "The result against each setting on its own; darker dots are later trials.",
             lambda f: _needs_finished(1)(f) or (None if f.params else "Needs at least one searched setting."),
             lambda s, f, t: vis.plot_slice(s, params=f.params, target_name=t)),
    PlotSpec("Contour", "The result over pairs of settings: where the good region lies.",
             _contour_missing, lambda s, f, t: vis.plot_contour(s, params=f.varied, target_name=t)),
    PlotSpec("Intermediate values", "Each trial's score epoch by epoch; pruned trials stop early.",
             lambda f: None if f.reported else "Appears when the first trial finishes its first epoch.",
             lambda s, f, t: vis.plot_intermediate_values(s)),
]
PLOT_NOTES = {spec.title: spec.note for spec in PLOTS}


def available_plots(study: optuna.Study, target_name: str = "Objective value") -> dict[str, go.Figure | str]:
    """Title → Plotly figure, or the sentence that says why it cannot be drawn yet (in PLOTS order)."""
    known = facts(study)
    out: dict[str, go.Figure | str] = {}
    for spec in PLOTS:
        reason = spec.missing(known)
        if reason is None:
            try:
                out[spec.title] = spec.draw(study, known, target_name).update_layout(
                    margin=dict(l=10, r=10, t=40, b=10))
                continue
            except Exception:  # noqa: BLE001 - a degenerate study must cost one picture, not the page
                log.exception("could not draw %s", spec.title)
                reason = "Could not be drawn for these trials; it may work once more trials finish."
        out[spec.title] = reason
    return out
