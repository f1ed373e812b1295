"""Train/val/test assignment: seeded, stratified by label, and patient-aware (a group never spans two splits)."""
from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field

SPLITS = ("train", "val", "test")


@dataclass
class _Unit:
    """Samples that move together: one patient (or one sample without a patient) under one fixed split."""
    members: list[int] = field(default_factory=list)
    fixed: str | None = None
    allowed: tuple[str, ...] = SPLITS
    labels: Counter = field(default_factory=Counter)


def assign_splits(labels: list[int | None], groups: list[str | None], fixed: list[str | None],
                  fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0) -> list[str]:
    """Split names per sample. Fixed splits (from train/val/test folders) are kept; a split the folders lack
    is carved from train. Tiny sets still get 1 val sample from 2 samples and 1 test sample from 3, where possible.
    """
    n = len(labels)
    if not (len(groups) == len(fixed) == n):
        raise ValueError("labels, groups and fixed must have the same length")
    units = _units(labels, groups, fixed)
    targets = _targets(units, dict(zip(SPLITS, fractions)))
    rng = random.Random(seed)
    free = [u for u in units if len(u.allowed) > 1]
    rng.shuffle(free)
    free.sort(key=lambda u: -len(u.members))          # big groups first, ties in seeded random order
    counts = {s: Counter() for s in SPLITS}
    for unit in units:
        if len(unit.allowed) == 1:
            _place(unit, unit.allowed[0], counts)
    for unit in free:
        best = min(unit.allowed, key=lambda s: (_cost(unit, counts[s], targets[s]), SPLITS.index(s)))
        _place(unit, best, counts)
    _ensure_non_empty(free, counts, n, fractions)
    out = [""] * n
    for unit in units:
        for i in unit.members:
            out[i] = unit.fixed
    return out


def _units(labels, groups, fixed) -> list[_Unit]:
    # Unfixed members of a group that has fixed members follow the group's most common folder split
    group_split = {}
    for g, counter in _counts(groups, fixed).items():
        group_split[g] = counter.most_common(1)[0][0]
    present = {f for f in fixed if f}
    missing = tuple(s for s in SPLITS if s not in present) if present else ()
    by_key: dict[tuple, _Unit] = {}
    for i, (label, group, split) in enumerate(zip(labels, groups, fixed)):
        split = split or (group_split.get(group) if group is not None else None)
        key = (group if group is not None else f"#{i}", split)
        unit = by_key.setdefault(key, _Unit())
        unit.members.append(i)
        unit.labels[label] += 1
        if split is None:
            unit.allowed = SPLITS
        elif split == "train" and missing:
            unit.allowed = ("train", *missing)          # the folders lack this split: carve it from train
        else:
            unit.allowed = (split,)
    return list(by_key.values())


def _counts(groups, fixed) -> dict[str, Counter]:
    found: dict[str, Counter] = defaultdict(Counter)
    for g, f in zip(groups, fixed):
        if g is not None and f:
            found[g][f] += 1
    return found


def _targets(units: list[_Unit], fractions: dict[str, float]) -> dict[str, Counter]:
    """Per split, the wished-for number of samples of each label (fraction × label count)."""
    total = Counter()
    for unit in units:
        total.update(unit.labels)
    weight = sum(fractions.values()) or 1.0
    return {s: Counter({label: fractions[s] / weight * count for label, count in total.items()}) for s in SPLITS}


def _cost(unit: _Unit, have: Counter, want: Counter) -> float:
    """How much adding the unit moves this split away from its per-label and overall targets."""
    cost = 0.0
    for label, k in unit.labels.items():
        cost += (have[label] + k - want[label]) ** 2 - (have[label] - want[label]) ** 2
    size, have_all, want_all = len(unit.members), sum(have.values()), sum(want.values())
    return cost + (have_all + size - want_all) ** 2 - (have_all - want_all) ** 2


def _place(unit: _Unit, split: str, counts: dict[str, Counter]) -> None:
    unit.fixed = split
    counts[split].update(unit.labels)


def _ensure_non_empty(free: list[_Unit], counts: dict[str, Counter], n: int, fractions: tuple) -> None:
    """Move the smallest movable train unit into an empty val (n >= 2) or test (n >= 3) split."""
    for split, needed, share in (("val", 2, fractions[1]), ("test", 3, fractions[2])):
        if n < needed or share <= 0 or sum(counts[split].values()) > 0:
            continue
        movable = [u for u in free if u.fixed == "train" and split in u.allowed
                   and sum(counts["train"].values()) - len(u.members) >= 1]
        if movable:
            unit = min(movable, key=lambda u: len(u.members))
            counts["train"].subtract(unit.labels)
            _place(unit, split, counts)
