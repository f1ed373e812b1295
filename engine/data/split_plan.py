"""Split an upload's samples so that nothing leaks: one patient's images, the frames of one file and near-duplicate
copies move together, then the seeded, stratified assignment of splits.py places them."""
from __future__ import annotations

import re
from collections import defaultdict

import numpy as np

from engine.data.duplicates import linked_sets
from engine.data.groups import FileInfo, Grouping, group_files
from engine.data.splits import assign_splits

EXAMPLES = 3


def file_of(row: dict) -> str:
    """The uploaded file a sample comes from (a multi-frame file's samples end in '#<frame>')."""
    return re.sub(r"#\d+$", "", row["source"])


def split_rows(rows: list[dict], classes: list[str], group_by: str, near_duplicates: list[list[int]],
               seed: int) -> dict:
    """Set each row's "group_key" (its patient as found by `group_by`), "group" (the set of samples it must share
    a split with: its patient, the frames of its file and its near-duplicates; None when it may go alone; what
    cross-validation folds use too) and "split". Returns the report's `groups` entry."""
    grouping = group_files([_file_info(r, classes) for r in rows], group_by)
    units = _units(rows, grouping, near_duplicates)
    labels = [r.get("label") for r in rows]
    fixed = [r.get("folder_split") for r in rows]
    for row, key, unit, split in zip(rows, grouping.groups, units, assign_splits(labels, units, fixed, seed=seed)):
        row["group_key"], row["group"], row["split"] = key, unit, split
    return _summary(rows, grouping)


def _file_info(row: dict, classes: list[str]) -> FileInfo:
    label = classes[row["label"]] if row.get("label") is not None else None
    return FileInfo(path=file_of(row), label=label, folders=(row["folder"],) if row.get("folder") else (),
                    patient=row.get("patient"))


def _units(rows: list[dict], grouping: Grouping, near_duplicates: list[list[int]]) -> list[str | None]:
    """Name of the set of samples each one must share a split with (None: it may go anywhere alone)."""
    firsts: dict[tuple, int] = {}
    links = []
    for i, (row, key) in enumerate(zip(rows, grouping.groups)):
        for tie in (("file", file_of(row)), ("group", key) if key is not None else None):
            if tie is not None:
                links.append((firsts.setdefault(tie, i), i))
    for members in near_duplicates:
        links += [(members[0], m) for m in members[1:]]
    unit: list[str | None] = [None] * len(rows)
    for number, members in enumerate(linked_sets(len(rows), np.array(links or [(0, 0)]))):
        for i in members:
            unit[i] = f"unit-{number:05d}"
    return unit


def _summary(rows: list[dict], grouping: Grouping) -> dict:
    members: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if row["group_key"] is not None:
            members[row["group_key"]].append(row)
    spanning = sorted(k for k, m in members.items() if len({r["split"] for r in m}) > 1)
    biggest = sorted(members, key=lambda k: (-len(members[k]), k))[:EXAMPLES]
    return {"key": grouping.key, "count": len(members), "spanning_splits": len(spanning),
            "examples": [{"key": k, "images": len(members[k]), "files": [r["source"] for r in members[k][:3]],
                          "splits": sorted({r["split"] for r in members[k]})} for k in biggest],
            "spanning": [{"key": k, "splits": sorted({r["split"] for r in members[k]})} for k in spanning[:10]]}
