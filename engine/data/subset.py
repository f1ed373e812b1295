"""A share of the training split for learning curves: whole patients (groups) at a time, the same order for every
share, so 10 % ⊂ 25 % ⊂ 50 % ⊂ 100 % and two runs with the same share train on the same images.

Groups are ordered once by a hash of their name (not by the run's seed: a curve's runs must nest). For
classification the order is stratified: each group gets the position rank within its class / groups of that
class, so the first group of every class comes first, every prefix holds the classes in about their proportions,
and a share always keeps at least one group of each class (a rare class would otherwise vanish from 10 %).
Validation and test samples are never touched."""
from __future__ import annotations

import hashlib
from collections import Counter, defaultdict

from engine.data.folds import sample_group

FULL = 1.0


def _hash(group: str) -> str:
    return hashlib.sha256(group.encode()).hexdigest()


def group_labels(samples: list[dict]) -> dict[str, object]:
    """Each group's commonest label (None for segmentation, whose samples carry no label)."""
    labels: dict[str, Counter] = defaultdict(Counter)
    for sample in samples:
        labels[sample_group(sample)][sample.get("label")] += 1
    return {group: counts.most_common(1)[0][0] for group, counts in labels.items()}


def group_order(samples: list[dict]) -> list[str]:
    """The training groups in the order shares take them (stratified by each group's commonest label)."""
    by_class: dict = defaultdict(list)
    for group, label in group_labels(samples).items():
        by_class[label].append(group)
    position = {}
    for members in by_class.values():
        members.sort(key=_hash)
        for rank, group in enumerate(members):
            position[group] = rank / len(members)
    return sorted(position, key=lambda g: (position[g], _hash(g)))


def kept_groups(samples: list[dict], fraction: float) -> set[str]:
    """Groups of `samples` (the run's training samples) whose images come closest to `fraction` of them, and at
    least one group of every class (both rules take a prefix of one order, so larger shares contain smaller)."""
    sizes, labels = Counter(sample_group(s) for s in samples), group_labels(samples)
    missing = set(labels.values())
    target, total, kept = fraction * len(samples), 0, set()
    for group in group_order(samples):
        if kept and not missing and abs(total + sizes[group] - target) >= abs(total - target):
            break
        kept.add(group)
        missing.discard(labels[group])
        total += sizes[group]
    return kept


def train_mask(samples: list[dict], splits: list[str], fraction: float) -> list[bool]:
    """Per sample: whether it is used for training at this share (False for validation and test samples)."""
    train = [s for s, split in zip(samples, splits) if split == "train"]
    if fraction >= FULL:
        return [split == "train" for split in splits]
    kept = kept_groups(train, fraction)
    return [split == "train" and sample_group(s) in kept for s, split in zip(samples, splits)]
