"""The dataset fingerprint on generated uploads whose sizes, classes, masks and intensities are known."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from engine.data.fingerprint import fingerprint
from engine.data.ingest import ingest
from engine.data.manifest import dataset_dir, load_manifest


def _png(path, pixels) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _noisy(rng, shape, level: float) -> np.ndarray:
    """A distinct image (ingest drops exact duplicates) whose mean brightness is about `level`."""
    return np.clip(level * 255 + rng.normal(0, 12, shape), 0, 255).astype(np.uint8)


@pytest.fixture
def classification_upload(tmp_path):
    """12 / 6 / 3 images of three classes; half the images dark (mean ≈ 0.2), half bright (≈ 0.7)."""
    rng = np.random.default_rng(0)
    i = 0
    for name, count in (("a", 12), ("b", 6), ("c", 3)):
        for k in range(count):
            level = 0.2 if i % 2 else 0.7
            _png(tmp_path / "cls" / name / f"{name}{k}.png", _noisy(rng, (40, 60), level))
            i += 1
    return tmp_path / "cls"


@pytest.fixture
def segmentation_upload(tmp_path):
    """20 images of 48 × 64: 15 with one 8 × 8 square (64 px) plus a 1-px speck, 5 with an empty mask."""
    rng = np.random.default_rng(1)
    for k in range(20):
        image = _noisy(rng, (48, 64), 0.45)
        mask = np.zeros((48, 64), np.uint8)
        if k < 15:
            y, x = rng.integers(4, 30), rng.integers(4, 40)
            mask[y:y + 8, x:x + 8] = 255
            mask[46, 62] = 255                                 # a speck is not "the smallest structure"
        _png(tmp_path / "seg" / "images" / f"case{k:02d}.png", image)
        _png(tmp_path / "seg" / "masks" / f"case{k:02d}.png", mask)
    return tmp_path / "seg"


def test_classification_counts_balance_sizes_and_two_intensity_sources(workspace, classification_upload):
    dataset_id = ingest(classification_upload, task="classification").dataset_id
    manifest = load_manifest(dataset_id)
    fp = manifest["fingerprint"]                                  # written at ingest
    assert fp["images"] == 21 and fp["sampled"] == 21 and fp["channels"] == 1
    assert fp["class_counts"] == {"a": 12, "b": 6, "c": 3}
    assert fp["imbalance"] == pytest.approx(4.0)
    assert fp["size"]["height"] == {"min": 40, "median": 40, "max": 40}
    assert fp["size"]["aspect"]["median"] == pytest.approx(1.5)
    assert fp["intensity"]["mean"][0] == pytest.approx((11 * 0.7 + 10 * 0.2) / 21, abs=0.02)
    assert fp["intensity"]["image_mean_sd"] == pytest.approx(0.25, abs=0.02)
    assert fp["intensity"]["sources_differ"] is True
    assert fp["intensity"]["p1"][0] < 0.2 and fp["intensity"]["p99"][0] > 0.7
    assert fp["groups"] == sum(manifest["split_counts"][s] for s in ("train", "val"))


def test_one_intensity_source_is_not_called_two(workspace, tmp_path):
    rng = np.random.default_rng(2)
    for name in ("x", "y"):
        for k in range(8):
            _png(tmp_path / "one" / name / f"{k}.png", _noisy(rng, (32, 32), 0.5))
    fp = load_manifest(ingest(tmp_path / "one", task="classification").dataset_id)["fingerprint"]
    assert fp["intensity"]["sources_differ"] is False and fp["imbalance"] == 1.0


def test_segmentation_foreground_share_object_size_and_empty_masks(workspace, segmentation_upload):
    fp = load_manifest(ingest(segmentation_upload, task="segmentation").dataset_id)["fingerprint"]
    assert fp["images"] == 20 and fp["size"]["width"]["median"] == 64
    (share,) = fp["foreground_share"].values()
    assert share == pytest.approx(15 / 20 * 65 / (48 * 64))
    assert fp["object_px"] == 64
    assert fp["object_share"] == pytest.approx(64 / (48 * 64))
    assert fp["empty_masks"] == pytest.approx(5 / 20)


def test_a_dataset_ingested_before_fingerprints_gets_one_lazily_and_cached(workspace, segmentation_upload):
    dataset_id = ingest(segmentation_upload, task="segmentation").dataset_id
    path = dataset_dir(dataset_id) / "manifest.json"
    old = json.loads(path.read_text())
    expected = old.pop("fingerprint")
    path.write_text(json.dumps(old))                              # as an older ingest wrote it
    assert fingerprint(load_manifest(dataset_id)) == expected
    assert json.loads((dataset_dir(dataset_id) / "fingerprint.json").read_text()) == expected
    assert fingerprint({"id": dataset_id}) == expected           # a listing row (no samples) reads the cache
