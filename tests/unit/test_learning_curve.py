"""Learning curves: the same settings on 10/25/50/100 % of the training split (whole patients, nested shares),
always validated on the same images, and one honest sentence on whether more data would help."""
from __future__ import annotations

import time
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest

from engine.data.folds import sample_group
from engine.data.subset import train_mask


def _manifest(patients: int = 20, classes: int = 2) -> dict:
    samples = []
    for p in range(patients):
        split = "val" if p % 5 == 0 else ("test" if p % 7 == 6 else "train")
        for s in range(2 + p % 3):                       # 2 to 4 images per patient
            samples.append({"key": f"{p:02d}{s}", "patient": f"patient-{p}", "split": split, "label": p % classes})
    return {"task": "classification", "samples": samples}


def test_shares_are_nested_whole_patients_and_about_the_right_size():
    manifest = _manifest(classes=1)          # one class: no group is added only to keep a class
    samples, splits = manifest["samples"], [s["split"] for s in manifest["samples"]]
    train = [s for s in samples if s["split"] == "train"]
    kept_before: set[str] = set()
    for fraction in (0.1, 0.25, 0.5, 1.0):
        used = train_mask(samples, splits, fraction)
        keys = {s["key"] for s, u in zip(samples, used) if u}
        assert all(s["split"] == "train" for s, u in zip(samples, used) if u)     # validation and test untouched
        groups = {sample_group(s) for s, u in zip(samples, used) if u}
        whole = {s["key"] for s in train if sample_group(s) in groups}
        assert keys == whole                                                       # no patient cut in two
        assert abs(len(keys) - fraction * len(train)) <= 2                        # within half a patient (≤ 4)
        assert kept_before <= keys                                                 # 10 % ⊂ 25 % ⊂ 50 % ⊂ 100 %
        kept_before = keys
    assert train_mask(samples, splits, 0.5) == train_mask(samples, splits, 0.5)   # deterministic


def test_a_small_share_of_a_classification_set_keeps_every_class():
    manifest = _manifest(patients=60, classes=2)
    rare = [s for s in manifest["samples"] if s["split"] == "train" and s["patient"] in ("patient-1", "patient-3")]
    for sample in rare:
        sample["label"] = 2                                      # a rare class: 2 of 40 training patients
    samples, splits = manifest["samples"], [s["split"] for s in manifest["samples"]]
    for fraction in (0.05, 0.1, 0.25):
        used = train_mask(samples, splits, fraction)
        assert set(Counter(s["label"] for s, u in zip(samples, used) if u)) == {0, 1, 2}, fraction


@pytest.fixture
def patients_dataset(lightbox_env) -> str:
    """10 patients of 4 slices each (32 px): 7 train, 2 validation, 1 test after ingest's split by patient."""
    from engine.data.demo import write_demo
    from engine.data.ingest import ingest
    src = write_demo("segmentation", lightbox_env.parent / "lc-src", n=40, size=32, seed=3)
    for path in sorted(Path(src).rglob("*.png")):
        number = int("".join(c for c in path.stem if c.isdigit()))
        path.rename(path.with_name(f"p{number // 4:02d}_{path.name}"))
    return ingest(src, task="segmentation", group_by=r"(p\d+)_").dataset_id


class SeenData:
    """Records what each run of the curve trained and validated on."""

    def __init__(self, seen: list) -> None:
        self.seen = seen

    def attach(self, events) -> None:
        from engine.training.events import Event
        events.on(Event.FIT_START, self.on_start)

    def on_start(self, trainer) -> None:
        if not self.seen:       # the runs still waiting must look alive to anyone checking for dead runs
            from engine.runs import queue
            time.sleep(4.5)
            assert queue.mark_stale_runs() == []
        self.seen.append((trainer.config.train_fraction, list(trainer.train_keys), list(trainer.val_keys)))


def test_the_curve_trains_four_runs_on_one_validation_split(patients_dataset, monkeypatch):
    monkeypatch.setenv("LIGHTBOX_STALE_SECONDS", "3")
    from engine.config import RunConfig
    from engine.data.manifest import load_manifest
    from engine.runs import learning_curve, store
    seen: list = []
    config = RunConfig(dataset_id=patients_dataset, arch="unet", epochs=1, batch_size=4, image_size=32,
                       device="cpu", preview_samples=0, model_options={"depth": 2, "base": 8})
    result = learning_curve.run_curve_here(config, handlers=lambda: [SeenData(seen)])
    runs = store.list_runs(study=result["curve_id"])
    assert len(runs) == 4 and {r["status"] for r in runs} == {"done"}
    assert sorted(r["config"]["train_fraction"] for r in runs) == [0.1, 0.25, 0.5, 1.0]
    assert [fraction for fraction, _, _ in seen] == [0.1, 0.25, 0.5, 1.0]
    assert all(val == seen[0][2] for _, _, val in seen) and seen[0][2]            # ONE validation split
    by_key = {s["key"]: s for s in load_manifest(patients_dataset)["samples"]}
    full = seen[-1][1]
    for (_, smaller, _), (_, larger, _) in pairwise(seen):
        assert set(smaller) < set(larger)                                          # nested
    for fraction, keys, _ in seen:
        assert abs(len(keys) - fraction * len(full)) <= 2                          # whole patients of 4 slices
        patients = {by_key[k]["group"] for k in keys}
        assert sum(by_key[k]["group"] in patients for k in full) == len(keys)     # no patient split
    points = result["points"]
    assert [p["train_images"] for p in points] == [len(keys) for _, keys, _ in seen]
    assert all(isinstance(p["value"], float) for p in points)
    assert result["verdict"] and result["verdict"] == learning_curve.summary(result["curve_id"])["verdict"]


def _point(fraction: float, images: int, value: float) -> dict:
    return {"fraction": fraction, "train_images": images, "value": value, "status": "done"}


def test_the_verdict_says_rising_only_beyond_chance_and_flat_otherwise():
    from engine.runs.learning_curve import verdict
    rising = [_point(0.1, 20, 0.40), _point(0.25, 50, 0.55), _point(0.5, 100, 0.66), _point(1.0, 200, 0.80)]
    assert "still rising" in verdict(rising, "dice", n=200)
    assert "more labelled images would likely help" in verdict(rising, "dice", n=200)
    flat = [_point(0.1, 20, 0.60), _point(0.25, 50, 0.78), _point(0.5, 100, 0.81), _point(1.0, 200, 0.815)]
    assert "flat" in verdict(flat, "dice", n=200)
    assert "rising" not in verdict(rising[:1], "dice", n=200)                     # one point: no claim
    unsure = verdict(rising, "dice", n=6)                                          # 6 images cannot tell 0.14 apart
    assert "still rising:" not in unsure and "flat" not in unsure and "cannot tell" in unsure
    lower = [_point(0.1, 20, 0.9), _point(0.25, 50, 0.7), _point(0.5, 100, 0.5), _point(1.0, 200, 0.3)]
    assert "still" in verdict(lower, "loss", n=None)                               # loss: falling is improving


def test_cli_queues_the_four_runs_tagged_together(patients_dataset, capsys):
    import json

    from engine.cli.main import main
    from engine.runs import store
    assert main(["learning-curve", "--dataset", patients_dataset, "--arch", "unet", "--image-size", "32",
                 "--submit", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    runs = store.list_runs(study=out["curve_id"])
    assert out["curve_id"].startswith("lc:") and sorted(r["id"] for r in runs) == sorted(out["run_ids"])
    assert sorted(r["config"]["train_fraction"] for r in runs) == [0.1, 0.25, 0.5, 1.0]
    assert {r["status"] for r in runs} == {"queued"}
    assert main(["learning-curve", "--dataset", patients_dataset, "--folds", "3", "--submit"]) != 0
    assert "one validation split" in capsys.readouterr().err


def test_a_students_curve_past_the_assignments_run_limit_records_nothing(patients_dataset):
    from engine.accounts.actor import Actor
    from engine.classroom.assignments import create_assignment
    from engine.config import RunConfig
    from engine.errors import UserError
    from engine.runs import learning_curve, store
    create_assignment(Actor("prof", "instructor"), patients_dataset, "lv", runs_per_student=3)
    config = RunConfig(dataset_id=patients_dataset, arch="unet", image_size=32, epochs=1)
    with pytest.raises(UserError, match="allows 3 runs per student: a learning curve of 4 training-set sizes needs "
                                        "4 runs; you have 3 left"):
        learning_curve.create_curve(config, actor=Actor("ana", "student"))
    assert store.list_runs() == []                                   # not 3 of the 4 runs
    _, run_ids = learning_curve.create_curve(config, actor=Actor("ana", "student"), fractions=(0.5, 1.0))
    assert [r["owner"] for r in store.list_runs()] == ["ana", "ana"] and len(run_ids) == 2
