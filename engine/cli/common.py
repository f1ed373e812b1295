"""What every CLI command shares: JSON-safe results, a failure that still carries a result, run summaries."""
from __future__ import annotations

import argparse
from datetime import datetime, timezone
from typing import Any

from engine.data.manifest import manifest_or_none
from engine.diagnosis import diagnose
from engine.runs import store
from engine.runs.paths import weights_note


class CommandFailed(Exception):
    def __init__(self, message: str, result: dict) -> None:
        super().__init__(message)
        self.result = result


def finite(obj: Any) -> Any:
    """NaN/inf are not JSON: report them as null so any JSON parser can read our output."""
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def add_actor_option(parser: argparse.ArgumentParser, nested: bool = False) -> None:
    """--as USER (and, on a subcommand's own subcommands, --json and --quiet): given anywhere on the line, unset
    stays unset so a later parser never overwrites what an earlier one read."""
    parser.add_argument("--as", dest="as_user", metavar="USER", default=argparse.SUPPRESS,
                        help="act as this user (a student sees and acts on their own runs only)")
    if nested:
        parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                            help="print one JSON object on the last line")
        parser.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars")


def iso_utc(stamp: float | None) -> str | None:
    """A store time (seconds since the epoch) as ISO 8601 in UTC: '2026-11-30T06:00:00Z'."""
    if stamp is None:
        return None
    return datetime.fromtimestamp(stamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


SUMMARY_KEYS = ("status", "message", "arch", "dataset_id", "epoch", "epochs", "best_metric", "best_value",
                "best_epoch", "best", "test", "params", "train_seconds", "study", "trial", "created_at", "owner")


def run_summary(run: dict, metrics: list[dict] | None = None, manifest: dict | None = None) -> dict:
    """One run as the CLI reports it, with its "diagnosis" (read from the store unless `metrics` is given)."""
    out = {"run_id": run["id"], **{k: run.get(k) for k in SUMMARY_KEYS}}
    out.update(started_at=iso_utc(run.get("started_at")), finished_at=iso_utc(run.get("finished_at")))
    if metrics is None:
        metrics = store.epoch_metrics_many([run["id"]])[run["id"]]
    if manifest is None:
        manifest = manifest_or_none(run.get("dataset_id"))
    out["diagnosis"] = diagnose(run, metrics, manifest)
    note = weights_note(run["id"]) if (run.get("config") or {}).get("pretrained", "none") != "none" else None
    if note:
        out["weights"] = note                   # what it kept of the weights it started from
    if isinstance(out.get("best"), dict):
        out["best"] = {k: v for k, v in out["best"].items() if not isinstance(v, list)}
    return out


def all_done(rows: list[dict], what: str, result: dict) -> dict:
    """The result of a job of several runs (folds, a learning curve's points) when every run finished; otherwise
    the command fails with how many did not and the first of them, the result still printed."""
    failed = [row for row in rows if row["status"] != "done"]
    if failed:
        raise CommandFailed(f"{len(failed)} of {len(rows)} {what} did not finish (first: run {failed[0]['run_id']} "
                            f"{failed[0]['status']})", result)
    return result


def run_summaries(runs: list[dict]) -> list[dict]:
    """run_summary for many runs: their metric histories in one query, each dataset's manifest read once."""
    histories = store.epoch_metrics_many([run["id"] for run in runs])
    manifests = {ds: manifest_or_none(ds) for ds in {run.get("dataset_id") for run in runs}}
    return [run_summary(run, histories[run["id"]], manifests[run.get("dataset_id")]) for run in runs]
