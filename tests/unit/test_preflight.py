"""Split sanity before a run is queued: no empty validation split, no class without training images, and
warnings for validation/test splits too small to trust."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from engine.config import RunConfig
from engine.data.manifest import dataset_dir, load_manifest
from engine.errors import UserError
from engine.preflight import (
    check_config,
    check_mask_classes,
    check_splits,
    split_warnings,
)


def manifest(task: str = "classification", classes=("chest", "abdomen"), **splits) -> dict:
    """splits: name=(count of class 0, count of class 1, ...)."""
    samples = [{"split": split, "label": label} for split, counts in splits.items()
               for label, count in enumerate(counts) for _ in range(count)]
    return {"task": task, "classes": list(classes), "samples": samples}


def move_split(dataset_id: str, source: str, to: str) -> None:
    path = dataset_dir(dataset_id) / "manifest.json"
    data = load_manifest(dataset_id)
    for sample in data["samples"]:
        if sample["split"] == source:
            sample["split"] = to
    data["split_counts"] = {s: sum(x["split"] == s for x in data["samples"]) for s in ("train", "val", "test")}
    path.write_text(json.dumps(data))


def test_empty_validation_split_is_refused_with_a_sentence_that_says_how_to_fix_it():
    with pytest.raises(UserError, match="validation split") as caught:
        check_splits(manifest(train=(10, 10), val=(), test=(3, 3)))
    message = str(caught.value)
    assert "train/ and val/ folders" in message and "patients" in message and message.count(". ") == 0
    with pytest.raises(UserError, match="training split"):
        check_splits(manifest(train=(), val=(3, 3)))
    check_splits(manifest(train=(10, 10), val=(1, 1)))          # small but present: allowed (and warned about)


def test_a_class_without_training_images_is_refused():
    with pytest.raises(UserError, match="'abdomen'"):
        check_splits(manifest(train=(10, 0), val=(3, 3), test=(3, 3)))
    # segmentation manifests list no labels per sample: nothing to count there, so nothing is refused
    check_splits(manifest("segmentation", ("background", "ventricle"), train=(10,), val=(3,)))


def test_masks_missing_a_class_are_refused_but_the_scan_stops_early():
    masks = np.zeros((5, 4, 4), dtype=np.uint8)
    with pytest.raises(UserError, match="'ventricle'"):
        check_mask_classes(masks, ["background", "ventricle"])
    masks[0, 1, 1] = 1
    check_mask_classes(masks, ["background", "ventricle"])

    class CountsReads(np.ndarray):
        reads = 0

        def __getitem__(self, item):
            CountsReads.reads += 1
            return super().__getitem__(item)

    many = np.zeros((10, 4, 4), dtype=np.uint8).view(CountsReads)
    many[0, 0, 0] = 1
    CountsReads.reads = 0
    check_mask_classes(many, ["background", "ventricle"], chunk=2)
    assert CountsReads.reads == 1                                # every class seen in the first chunk


def test_split_warnings_name_the_split_and_its_size():
    assert split_warnings(manifest(train=(100, 100), val=(20, 20), test=(20, 20))) == []
    (val,) = split_warnings(manifest(train=(100, 100), val=(6, 6), test=(20, 20)))
    assert (val["kind"], val["split"], val["n"]) == ("small_split", "val", 12)
    assert "validation split holds 12 images" in val["message"] and "fewer than 30" in val["message"]
    (test,) = split_warnings(manifest(train=(100, 100), val=(20, 20), test=(40, 3)))
    assert (test["split"], test["n"]) == ("test", 43) and "3 of 'abdomen'" in test["message"]
    assert "fewer than 5 per class" in test["message"]
    empty_test = split_warnings(manifest(train=(100, 100), val=(20, 20), test=()))
    assert [(w["split"], w["n"]) for w in empty_test] == [("test", 0)] and "empty" in empty_test[0]["message"]
    # segmentation: only the image count matters
    seg = manifest("segmentation", ("background", "ventricle"), train=(200,), val=(26,), test=(40,))
    assert [(w["split"], w["n"]) for w in split_warnings(seg)] == [("val", 26)]


def test_check_config_and_the_trainer_refuse_an_empty_validation_split(tiny_classification, tmp_path):
    """The Trainer used to validate on its training images when the validation split was empty."""
    from engine.training.trainer import Trainer
    move_split(tiny_classification, "val", "train")
    config = RunConfig(dataset_id=tiny_classification, arch="lenet5", epochs=1, image_size=32)
    with pytest.raises(UserError, match="validation"):
        check_config(config)
    with pytest.raises(UserError, match="validation"):
        Trainer(config, tmp_path / "run")


def test_trainer_refuses_training_masks_without_the_structure(tiny_segmentation, tmp_path, monkeypatch):
    from engine.training import trainer as trainer_module
    real = trainer_module.load_split

    def blank_training_masks(dataset_id, split, size, **folds):
        arrays = real(dataset_id, split, size, **folds)
        if split == "train":
            arrays.targets[...] = 0
        return arrays

    monkeypatch.setattr(trainer_module, "load_split", blank_training_masks)
    config = RunConfig(dataset_id=tiny_segmentation, arch="unet", epochs=1, image_size=32,
                       model_options={"depth": 2, "base": 8})
    with pytest.raises(UserError, match="No training mask contains"):
        trainer_module.Trainer(config, tmp_path / "run")


@pytest.mark.slow
def test_train_json_exits_non_zero_with_one_line(tiny_classification, lightbox_env):
    move_split(tiny_classification, "val", "train")
    env = {**os.environ, "LIGHTBOX_HOME": str(lightbox_env)}
    env.pop("LIGHTBOX_DB_URL", None)
    proc = subprocess.run([sys.executable, "-m", "engine", "train", "--dataset", tiny_classification, "--arch",
                           "lenet5", "--epochs", "1", "--image-size", "32", "--json", "--quiet"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "validation split" in lines[0] and "Traceback" not in proc.stderr


def test_imbalanced_classes_are_headlined_by_balanced_accuracy(tiny_classification, lightbox_env):
    """Not chosen by the user, the best epoch is picked by balanced accuracy when classes are > 1.5 : 1."""
    import json

    from engine import workspace
    assert check_config(RunConfig(dataset_id=tiny_classification)).get("task") == "classification"
    assert RunConfig(dataset_id=tiny_classification).monitor == ""
    balanced = RunConfig(dataset_id=tiny_classification)
    check_config(balanced)
    assert balanced.monitor == "accuracy"
    path = workspace.datasets_dir() / tiny_classification / "manifest.json"
    manifest = json.loads(path.read_text())
    train = [s for s in manifest["samples"] if s["split"] == "train"]
    for sample in train[: len(train) - 2]:
        sample["label"] = 0
    train[-1]["label"] = 1
    path.write_text(json.dumps(manifest))
    imbalanced = RunConfig(dataset_id=tiny_classification)
    check_config(imbalanced)
    assert imbalanced.monitor == "balanced_accuracy"
    chosen = RunConfig(dataset_id=tiny_classification, monitor="accuracy")
    check_config(chosen)
    assert chosen.monitor == "accuracy"                   # the user's choice stands
