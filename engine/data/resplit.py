"""Split an ingested dataset again with another patient grouping, as a new dataset: runs trained on the old split
keep meaning what they meant, and no file has to be uploaded again (the arrays are shared by hard links)."""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from engine import workspace
from engine.accounts.actor import Actor
from engine.classroom.assignments import hides_test_from
from engine.data.checks import find_warnings
from engine.data.duplicates import near_duplicate_sets, thumbnail
from engine.data.groups import check_group_by
from engine.data.layout import SPLIT_NAMES
from engine.data.manifest import SPLITS, dataset_dir, load_manifest
from engine.data.split_plan import file_of, split_rows
from engine.errors import UserError

GROUPING_NAMES = {"auto": "auto grouping", "none": "no grouping", "folder": "grouped by folder"}


def resplit(dataset_id: str, group_by: str, actor: Actor | None = None) -> str:
    """The id of a new dataset holding the same images, split again with `group_by` (see ingest); it belongs to
    `actor` (classroom mode). A student may not split again a dataset whose test split an assignment hides: the
    hidden test images would land in splits they can see."""
    manifest = load_manifest(dataset_id)        # refuses an id that is not a dataset's (never a path) in one line
    if hides_test_from(actor, dataset_id):
        raise UserError("This dataset's test split is hidden for an assignment, so it cannot be split again; "
                        "ask your instructor.")
    group_by = check_group_by(group_by)
    rows = [_with_folder_split(dict(row)) for row in manifest["samples"]]
    copies = _near_duplicates(dataset_id, rows)
    report = dict(manifest.get("report") or {})
    seed = int(manifest.get("seed", 0))
    report["groups"] = split_rows(rows, manifest["classes"], group_by, copies, seed)
    if not any(row["split"] == "train" for row in rows):
        raise UserError("That grouping leaves no training images (only val/ or test/ folders); choose another.")
    counts = Counter(row["split"] for row in rows)
    report["per_split"] = {s: counts.get(s, 0) for s in SPLITS}
    report["warnings"] = find_warnings(rows, manifest["classes"], manifest["task"], report["groups"], copies)
    new_id = f"{re.sub(r'-[0-9a-f]{6}$', '', dataset_id)}-{secrets.token_hex(3)}"
    title = GROUPING_NAMES.get(group_by, f"grouped by {group_by}")
    name = re.sub(r" \((auto grouping|no grouping|grouped by .*)\)$", "", manifest["name"]) + f" ({title})"
    new = manifest | {"id": new_id, "name": name, "created": datetime.now(UTC).isoformat(),
                      "samples": rows, "split_counts": report["per_split"], "report": report, "group_by": group_by,
                      "resplit_from": dataset_id, "owner": actor.name if actor else manifest.get("owner")}
    _write_linked_copy(dataset_dir(dataset_id), new_id, new)
    return new_id


def _with_folder_split(row: dict) -> dict:
    """A row of a dataset ingested before the split fixed by train/val/test folders was recorded: read it from
    the path as uploaded, as the layout scan does."""
    if "folder_split" not in row:
        folders = [part.lower() for part in file_of(row).split("/")[:-1]]
        row["folder_split"] = next((SPLIT_NAMES[f] for f in folders if f in SPLIT_NAMES), None)
    return row


def _near_duplicates(dataset_id: str, rows: list[dict]) -> list[list[int]]:
    """The sets found at ingest; a dataset ingested before they were recorded is checked on its stored arrays."""
    if rows and "near_duplicate" in rows[0]:
        sets: dict[int, list[int]] = {}
        for i, row in enumerate(rows):
            if row["near_duplicate"] is not None:
                sets.setdefault(row["near_duplicate"], []).append(i)
        return sorted(sets.values(), key=lambda m: m[0])
    folder = dataset_dir(dataset_id) / "images"
    thumbs = np.stack([thumbnail(np.load(folder / f"{row['key']}.npy").astype(np.float32)) for row in rows])
    found = near_duplicate_sets(thumbs)
    for row in rows:
        row["near_duplicate"] = None
    for number, members in enumerate(found):
        for i in members:
            rows[i]["near_duplicate"] = number
    return found


def _write_linked_copy(source: Path, new_id: str, manifest: dict) -> None:
    """The new dataset folder appears whole or not at all; arrays are hard links (copies across file systems)."""
    root = workspace.home() / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="resplit-", dir=root))
    try:
        for path in sorted(source.rglob("*")):
            relative = path.relative_to(source)
            if any(part.startswith(".") for part in relative.parts):
                continue                                        # a cache being built right now
            target = staging / relative
            if path.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            elif path.name != "manifest.json":
                try:
                    os.link(path, target)
                except OSError:
                    shutil.copy2(path, target)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
        staging.rename(workspace.datasets_dir() / new_id)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
