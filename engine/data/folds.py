"""Cross-validation by group: the training and validation samples are dealt into K folds so that one patient
(or one near-duplicate group) is always in one fold; fold i validates on its own groups and trains on the rest.
The test split is never touched: it stays the one held-out score of every fold."""
from __future__ import annotations

import random
from collections import Counter, defaultdict

SPLITS = ("train", "val", "test")


def sample_group(sample: dict) -> str:
    """The unit that must not be split: the ingest group (patient, series, near-duplicates), else the sample."""
    return sample.get("group") or sample.get("patient") or f"sample:{sample['key']}"


def assign_folds(samples: list[dict], k: int, seed: int = 0) -> dict[str, int]:
    """group → fold (1..k) over the train and val samples, biggest groups first into the emptiest fold, so folds
    hold about the same number of images; seeded, so every run of one cross-validation sees the same folds."""
    sizes: Counter = Counter(sample_group(s) for s in samples if s["split"] in ("train", "val"))
    groups = sorted(sizes)
    random.Random(seed).shuffle(groups)
    groups.sort(key=lambda g: -sizes[g])
    load = {fold: 0 for fold in range(1, k + 1)}
    out = {}
    for group in groups:
        fold = min(load, key=lambda f: (load[f], f))
        out[group] = fold
        load[fold] += sizes[group]
    return out


def run_splits(manifest: dict, folds: int = 0, fold: int = 0, seed: int = 0) -> list[str]:
    """The split of every sample for one run: the dataset's own, or under K-fold cross-validation 'val' for the
    groups of fold `fold`, 'train' for the other folds, and 'test' unchanged."""
    samples = manifest["samples"]
    if folds < 2:
        return [s["split"] for s in samples]
    of = assign_folds(samples, folds, seed)
    return ["test" if s["split"] == "test" else ("val" if of[sample_group(s)] == fold else "train")
            for s in samples]


def fold_groups(manifest: dict, folds: int, seed: int = 0) -> dict[int, list[str]]:
    """fold → the groups it validates on (for reports: no group appears in two folds)."""
    out: dict[int, list[str]] = defaultdict(list)
    for group, fold in sorted(assign_folds(manifest["samples"], folds, seed).items()):
        out[fold].append(group)
    return dict(out)


def group_count(manifest: dict) -> int:
    return len({sample_group(s) for s in manifest["samples"] if s["split"] in ("train", "val")})


def fold_view(manifest: dict, folds: int, fold: int, seed: int = 0) -> dict:
    """The manifest as one cross-validation run sees it (samples carry that run's split)."""
    if folds < 2:
        return manifest
    splits = run_splits(manifest, folds, fold, seed)
    return {**manifest, "samples": [{**s, "split": split} for s, split in zip(manifest["samples"], splits)]}
