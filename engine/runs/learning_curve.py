"""Learning curve as one job: the same settings trained on 10 / 25 / 50 / 100 % of the training split (whole
patients, nested shares: engine.data.subset), all validated on the same split, tagged together in the store's
`study` column ("lc:<id>"); the summary plots validation score against training images and says in one
sentence whether more labelled images would likely help.

How the sentence is decided: the gain between the two largest shares is compared with what chance alone gives
between two scores on the validation images (engine.diagnosis.noise_margin, the rule Compare uses). One run per
share cannot separate seed-to-seed noise from a real gain, so the sentence says "likely" and never more."""
from __future__ import annotations

import math
import secrets
import threading
from dataclasses import replace

from engine import diagnosis
from engine.accounts.actor import Actor
from engine.config import RunConfig
from engine.data.dataset import split_index
from engine.data.manifest import manifest_or_none
from engine.errors import UserError
from engine.preflight import check_config
from engine.runs import execute, queue, start_from, store
from engine.runs.submit import create_runs
from engine.tasks import LOWER_IS_BETTER, METRIC_TITLES

LC_PREFIX = "lc:"                      # the store's `study` column tags the runs of one learning curve
FRACTIONS = (0.1, 0.25, 0.5, 1.0)
FLAT_GAIN = 0.02           # a last gain (within chance) this small in a [0, 1] score counts as flat: nobody acts on it


def curve_configs(config: RunConfig, fractions=FRACTIONS) -> list[RunConfig]:
    tag = config.name or "learning curve"
    return [replace(config, train_fraction=f, name=f"{tag} · {f:.0%} of training") for f in fractions]


def _check(config: RunConfig, fractions) -> None:
    if config.folds >= 2:
        raise UserError("A learning curve trains on one validation split; set folds to 0 (or 1) and try again.")
    if len(set(fractions)) < 2:
        raise UserError("A learning curve needs at least two different shares of the training split.")
    for fraction in fractions:
        check_config(replace(config, train_fraction=fraction))        # refuse before any run is recorded


def create_curve(config: RunConfig, fractions=FRACTIONS, actor: Actor | None = None,
                 status: str = "queued") -> tuple[str, list[str]]:
    """Record (and with status 'queued', enqueue) one run per share; returns the curve id and the run ids."""
    _check(config, fractions)
    start_from.check_start(actor, config.pretrained)              # a student starts only from their own runs
    curve_id = LC_PREFIX + secrets.token_hex(4)
    configs = curve_configs(config, fractions)
    # all or none: a student's assignment limits are checked for every run of the curve before any is recorded
    run_ids = create_runs(configs, status=status, study=curve_id, trials=list(range(1, len(configs) + 1)),
                          actor=actor)
    if status == "queued":
        for run_id in run_ids:
            queue.enqueue(run_id, resume=False)
    return curve_id, run_ids


def run_curve_here(config: RunConfig, fractions=FRACTIONS, actor: Actor | None = None,
                   handlers=lambda: ()) -> dict:
    """`learning-curve` without --submit: the runs one after another in this process; the summary."""
    curve_id, run_ids = create_curve(config, fractions, actor, status="starting")
    # The runs waiting their turn belong to this process: their heartbeats say it lives (else any `runs` listing
    # would take them for dead and mark them interrupted), and stop when it dies.
    alive = [threading.Event() for _ in run_ids]
    for run_id, stop in zip(run_ids, alive):
        execute.heartbeat_thread(run_id, stop)
    try:
        for run_id, stop in zip(run_ids, alive):
            execute.run_job(run_id, handlers=handlers())
            stop.set()
    finally:
        for stop in alive:
            stop.set()
    return summary(curve_id)


def summary(curve_id: str, runs: list[dict] | None = None) -> dict:
    """{"curve_id", "metric", "points": [{"run_id", "fraction", "train_images", "value", "status"}], "verdict"}."""
    runs = sorted(store.list_runs(study=curve_id) if runs is None else runs, key=lambda r: r.get("trial") or 0)
    if not runs:
        return {"curve_id": curve_id, "metric": None, "points": [], "n": None,
                "verdict": "This learning curve has no runs."}
    config = runs[0]["config"]
    metric = config.get("monitor") or runs[0].get("best_metric")
    manifest = manifest_or_none(config["dataset_id"])
    points = [{"run_id": r["id"], "fraction": r["config"].get("train_fraction", 1.0), "status": r["status"],
               "train_images": _train_images(manifest, r["config"]), "value": _value(r, metric)} for r in runs]
    done = [r for r in runs if _value(r, metric) is not None]
    n = diagnosis.scored_images(done[-1], metric, diagnosis.validation_count(done[-1], manifest)[0]) if done else None
    return {"curve_id": curve_id, "metric": metric, "points": points, "n": n, "verdict": verdict(points, metric, n)}


def _train_images(manifest: dict | None, config: dict) -> int | None:
    if manifest is None:
        return None           # the dataset was deleted: the shares stay, the counts go
    return len(split_index(manifest, "train", config.get("folds") or 0, config.get("fold") or 0,
                           config.get("train_fraction", 1.0)))


def _value(run: dict, metric: str | None) -> float | None:
    value = (run.get("best") or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def verdict(points: list[dict], metric: str | None, n: int | None) -> str:
    """One sentence: is the curve still rising between its two largest training sets, beyond chance?

    Rising: the last gain exceeds what chance gives on the validation images. Flat: it is within chance and
    smaller than FLAT_GAIN (a change nobody would act on). Within chance but larger: this validation set cannot
    tell, and the sentence says so rather than calling the curve flat."""
    scored = sorted((p for p in points if p.get("value") is not None),
                    key=lambda p: (p.get("train_images") or 0, p["fraction"]))
    title = METRIC_TITLES.get(metric, metric or "score")
    if len(scored) < 2:
        return (f"Only {len(scored)} of {len(points)} runs have a validation {title} yet; the curve needs at least "
                "two finished runs to say anything.")
    (before, last), sign = scored[-2:], -1 if metric in LOWER_IS_BETTER else 1
    gain = sign * (last["value"] - before["value"])
    if metric in diagnosis.NOISE_METRICS and n:
        margin = diagnosis.noise_margin(before["value"], last["value"], n)
        yardstick, flat = f"the ±{margin:.3f} that chance alone gives on {n} validation images", FLAT_GAIN
    else:           # no noise model for this metric: judge the last step against the whole curve's change
        margin = max(0.0, 0.25 * sign * (last["value"] - scored[0]["value"]))
        yardstick, flat = f"a quarter of the whole curve's change ({margin:.3f})", margin
    change = f"validation {title} changed by {sign * gain:+.3f} {_sizes(before, last)}"
    hint = f" (one run per share, {len(scored)} points: a hint, not a measurement)"
    if gain > margin:
        return (f"The curve is still rising: {change}, more than {yardstick}, so more labelled images would "
                f"likely help{hint}.")
    if gain < -margin:
        return (f"The curve falls at the largest training set: {change}, more than {yardstick}; that is more "
                f"likely run-to-run variation than harm from more data, so repeat with another seed before "
                f"concluding{hint}.")
    if abs(gain) <= flat:
        return (f"The curve is flat at the top: {change}, within {yardstick}, so more of the same images will "
                f"likely not help much; try augmentation or a different model{hint}.")
    return (f"The curve may still be rising, but this validation set cannot tell: {change}, within {yardstick}; "
            f"add validation images (or use cross-validation) before deciding whether more labelled images would "
            f"help{hint}.")


def _sizes(before: dict, last: dict) -> str:
    if before.get("train_images") and last.get("train_images"):
        return f"from {before['train_images']} to {last['train_images']} training images"
    return f"from {before['fraction']:.0%} to {last['fraction']:.0%} of the training split"


def curves_of(runs: list[dict]) -> dict[str, list[dict]]:
    """The runs of each learning curve among `runs`, by curve id."""
    out: dict[str, list[dict]] = {}
    for run in runs:
        if (run.get("study") or "").startswith(LC_PREFIX):
            out.setdefault(run["study"], []).append(run)
    return out
