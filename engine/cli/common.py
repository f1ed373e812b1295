"""What every CLI command shares: JSON-safe results, a failure that still carries a result, run summaries."""
from __future__ import annotations

from typing import Any


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


SUMMARY_KEYS = ("status", "message", "arch", "dataset_id", "epoch", "epochs", "best_metric", "best_value",
                "best_epoch", "best", "test", "params", "train_seconds", "study", "trial", "created_at")


def run_summary(run: dict) -> dict:
    out = {"run_id": run["id"], **{k: run.get(k) for k in SUMMARY_KEYS}}
    if isinstance(out.get("best"), dict):
        out["best"] = {k: v for k, v in out["best"].items() if not isinstance(v, list)}
    return out
