"""Cross-validation by group: every patient is validated exactly once, never split across folds, and the test
split is never touched."""
from __future__ import annotations

from collections import defaultdict

import pytest

from engine.data.folds import assign_folds, fold_groups, fold_view, run_splits, sample_group


def _manifest(patients: int = 7, slices: int = 3, test_patients: int = 2) -> dict:
    samples = []
    for p in range(patients + test_patients):
        for s in range(slices + p % 2):              # patients hold 3 or 4 slices
            split = "test" if p >= patients else ("val" if p % 3 == 0 else "train")
            samples.append({"key": f"{p:02d}{s}", "patient": f"patient-{p}", "split": split, "label": p % 2})
    return {"task": "classification", "classes": ["a", "b"], "samples": samples}


@pytest.mark.parametrize("k", [2, 3, 5, 7])
def test_every_patient_is_validated_exactly_once(k):
    manifest = _manifest()
    validated = defaultdict(list)
    for fold in range(1, k + 1):
        splits = run_splits(manifest, k, fold)
        per_patient = defaultdict(set)
        for sample, split in zip(manifest["samples"], splits):
            per_patient[sample["patient"]].add(split)
            if sample["split"] == "test":
                assert split == "test"                       # the held-out split stays held out
        for patient, seen in per_patient.items():
            assert len(seen) == 1, f"{patient} is split across {seen} in fold {fold}"
            if seen == {"val"}:
                validated[patient].append(fold)
        assert "val" in splits and "train" in splits
    assert sorted(validated) == [f"patient-{p}" for p in range(7)]
    assert all(len(folds) == 1 for folds in validated.values())


def test_folds_are_balanced_seeded_and_listed():
    manifest = _manifest(patients=10)
    of = assign_folds(manifest["samples"], 5)
    assert of == assign_folds(manifest["samples"], 5)                 # the same for every run of one CV
    sizes = defaultdict(int)
    for sample in manifest["samples"]:
        if sample["split"] != "test":
            sizes[of[sample_group(sample)]] += 1
    assert max(sizes.values()) - min(sizes.values()) <= 4            # one patient's slices at most apart
    listed = fold_groups(manifest, 5)
    assert sorted(g for groups in listed.values() for g in groups) == sorted(of)
    view = fold_view(manifest, 5, 2)
    assert [s["split"] for s in view["samples"]] == run_splits(manifest, 5, 2)
    assert [s["split"] for s in manifest["samples"]] == [s["split"] for s in _manifest(patients=10)["samples"]]


def test_without_patients_each_sample_is_its_own_group():
    manifest = {"samples": [{"key": str(i), "split": "train"} for i in range(6)]}
    assert len(set(assign_folds(manifest["samples"], 3).values())) == 3
    assert run_splits(manifest, 0, 0) == ["train"] * 6                # no cross-validation: the dataset's own


def test_train_folds_from_the_cli_validates_every_patient_once(tmp_path):
    """`train --folds 3 --json`: three ordinary runs, disjoint validation patients covering all, mean ± sd."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "LIGHTBOX_HOME": str(tmp_path / "ws")}
    env.pop("LIGHTBOX_DB_URL", None)

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "engine", *args, "--json", "--quiet"], capture_output=True,
                              text=True, env=env, timeout=600)
        return proc, (json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else None)

    cli("demo-data", "classification", str(tmp_path / "demo.zip"), "--n", "36", "--size", "32")
    _, ingested = cli("ingest", str(tmp_path / "demo.zip"), "--task", "classification")
    path = tmp_path / "ws" / "datasets" / ingested["dataset_id"] / "manifest.json"
    manifest = json.loads(path.read_text())
    for i, sample in enumerate(manifest["samples"]):      # 12 patients of 3 images each, as ingest would group
        sample["group"] = f"patient-{i // 3}"
    path.write_text(json.dumps(manifest))
    proc, result = cli("train", "--dataset", ingested["dataset_id"], "--arch", "lenet5", "--epochs", "1",
                       "--image-size", "32", "--batch-size", "4", "--folds", "3")
    assert proc.returncode == 0, proc.stderr
    assert [f["fold"] for f in result["folds"]] == [1, 2, 3] and len({f["run_id"] for f in result["folds"]}) == 3
    validated = [g for f in result["folds"] for g in f["val_groups"]]
    outside_test = {s["group"] for s in manifest["samples"] if s["split"] != "test"}
    assert sorted(validated) == sorted(outside_test) and len(validated) == len(set(validated))
    assert set(result["cv"]["accuracy"]) >= {"mean", "sd"} and result["cv"]["accuracy"]["n"] == 3
    _, listed = cli("runs")
    assert sorted(r["run_id"] for r in listed["runs"]) == sorted(f["run_id"] for f in result["folds"])
    proc, _ = cli("train", "--dataset", ingested["dataset_id"], "--arch", "lenet5", "--folds", "40")
    assert proc.returncode != 0 and "needs at least 40 patients" in proc.stderr and "Traceback" not in proc.stderr
