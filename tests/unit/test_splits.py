"""Split assignment: seeded, stratified, patient-aware, keeps folder splits, gives tiny sets a val and test."""
from __future__ import annotations

import random
from collections import Counter, defaultdict

import pytest

from engine.data.splits import assign_splits


def test_fractions_and_stratification_on_ungrouped_samples():
    labels = [i % 3 for i in range(600)]
    splits = assign_splits(labels, [None] * 600, [None] * 600, seed=1)
    counts = Counter(splits)
    assert counts == {"train": 420, "val": 90, "test": 90}
    per = Counter(zip(splits, labels))
    assert all(per[("val", label)] == 30 for label in range(3))


def test_same_seed_same_answer_other_seed_other_answer():
    labels = [i % 2 for i in range(100)]
    first = assign_splits(labels, [None] * 100, [None] * 100, seed=5)
    assert first == assign_splits(labels, [None] * 100, [None] * 100, seed=5)
    assert first != assign_splits(labels, [None] * 100, [None] * 100, seed=6)


@pytest.mark.parametrize("seed", range(25))
def test_random_groups_never_span_two_splits(seed):
    rng = random.Random(seed)
    n = rng.randint(20, 400)
    patients = rng.randint(2, 60)
    labels = [rng.randrange(3) for _ in range(n)]
    groups = [f"p{rng.randrange(patients)}" if rng.random() < 0.8 else None for _ in range(n)]
    splits = assign_splits(labels, groups, [None] * n, seed=seed)
    seen = defaultdict(set)
    for group, split in zip(groups, splits):
        if group is not None:
            seen[group].add(split)
    assert all(len(s) == 1 for s in seen.values())
    assert set(splits) <= {"train", "val", "test"} and Counter(splits)["train"] >= n * 0.45


def test_fixed_splits_are_kept_and_val_is_carved_from_train():
    n = 200
    fixed = ["test" if i % 5 == 0 else "train" for i in range(n)]
    splits = assign_splits([i % 2 for i in range(n)], [None] * n, fixed)
    assert all(s == "test" for s, f in zip(splits, fixed) if f == "test")
    carved = Counter(s for s, f in zip(splits, fixed) if f == "train")
    assert carved["test"] == 0 and 20 <= carved["val"] <= 40


def test_full_folder_layout_is_left_alone():
    fixed = ["train"] * 5 + ["val"] * 2 + ["test"] * 2
    assert assign_splits([0] * 9, [None] * 9, fixed) == fixed


def test_only_train_folder_carves_val_and_test():
    splits = assign_splits([0] * 40, [None] * 40, ["train"] * 40)
    assert Counter(splits)["val"] >= 1 and Counter(splits)["test"] >= 1


def test_unfixed_members_of_a_fixed_group_follow_it():
    splits = assign_splits([0, 0, 0, 1], ["p", "p", "p", None], ["test", None, None, None])
    assert splits[:3] == ["test"] * 3


@pytest.mark.parametrize("n, expected", [(1, {"train": 1}), (2, {"train": 1, "val": 1}),
                                         (3, {"train": 1, "val": 1, "test": 1})])
def test_tiny_datasets_still_get_val_and_test(n, expected):
    assert Counter(assign_splits([0] * n, [None] * n, [None] * n)) == expected


def test_one_big_patient_cannot_be_split():
    splits = assign_splits([0] * 10, ["same"] * 10, [None] * 10)
    assert len(set(splits)) == 1
