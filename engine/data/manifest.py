"""An ingested dataset's folder and manifest.json: where it is, what it holds, deleting it. No torch here."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from engine import workspace
from engine.errors import UserError, shown

SPLITS = ("train", "val", "test")
# What ingest and the demos make ('chest-x-ray-pilot-3fa9c1'): a dataset id is looked up, never a path to follow
DATASET_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,119}")


def dataset_dir(dataset_id: str) -> Path:
    """The dataset's folder; an id that ingest could not have made ('../x', a 100 KB string) is refused."""
    if not isinstance(dataset_id, str) or not DATASET_ID.fullmatch(dataset_id) or ".." in dataset_id:
        raise UserError(f"Dataset '{shown(dataset_id)}' does not exist; ingest it first or pick one from the list.")
    return workspace.datasets_dir() / dataset_id


def load_manifest(dataset_id: str) -> dict:
    path = dataset_dir(dataset_id) / "manifest.json"
    if not path.exists():
        raise UserError(f"Dataset '{shown(dataset_id)}' does not exist; ingest it first or pick one from the list.")
    return json.loads(path.read_text())


def list_datasets() -> list[dict]:
    """Manifests of all ingested datasets, newest first (without the per-sample list)."""
    found = []
    for path in workspace.datasets_dir().glob("*/manifest.json"):
        manifest = json.loads(path.read_text())
        manifest.pop("samples", None)
        found.append(manifest)
    return sorted(found, key=lambda m: m.get("created", ""), reverse=True)


def delete_dataset(dataset_id: str) -> None:
    shutil.rmtree(dataset_dir(dataset_id), ignore_errors=True)


def manifest_or_none(dataset_id: str | None) -> dict | None:
    """A run outlives its dataset: the manifest when it is still there and readable, else None."""
    if not dataset_id:
        return None
    try:
        return load_manifest(dataset_id)
    except (UserError, OSError, ValueError):
        return None
