"""Built-in demo datasets: they go through ingest cleanly and are not solvable by a trivial intensity rule."""
from __future__ import annotations

import zipfile

import numpy as np

from engine.data import demo
from engine.data.dataset import list_datasets, load_manifest, load_split
from engine.data.ingest import ingest


def test_segmentation_demo_zip_ingests_without_problems(workspace, tmp_path):
    out = demo.write_demo("segmentation", tmp_path / "cardiac.zip", n=24, size=96, seed=1)
    names = zipfile.ZipFile(out).namelist()
    assert "images/case_000.png" in names and "masks/case_023.png" in names
    result = ingest(out, "segmentation")
    assert result.report.problems == [] and result.report.samples == 24
    assert result.report.mask_values == [0, 255] and result.report.sizes == {"96x96": 24}
    train = load_split(result.dataset_id, "train", 96)
    assert set(np.unique(train.targets)) == {0, 1}


def test_default_cardiac_demo_gives_no_warning(workspace, tmp_path):
    """Smooth phantom slices are not near-duplicates of each other, and the default size fills val and test."""
    result = ingest(demo.write_demo("segmentation", tmp_path / "cardiac"), "segmentation")
    assert result.report.warnings == [] and result.report.groups["key"] == "none"
    assert result.report.per_split == {"train": 140, "val": 30, "test": 30}


def test_cardiac_is_not_a_threshold_problem():
    rng = np.random.default_rng(0)
    slices = [demo.cardiac_slice(rng, 128) for _ in range(30)]
    images = np.stack([s[0] for s in slices]).astype(np.float32) / 255
    masks = np.stack([s[1] for s in slices]).astype(bool)
    fraction = masks.mean()
    assert 0.01 < fraction < 0.15                           # the LV is a small but real target
    dice = [2 * (masks & (images > t)).sum() / (masks.sum() + (images > t).sum()) for t in np.linspace(0.05, 0.95, 46)]
    best = max(dice)
    assert best < 0.6                                       # the bright RV and fat defeat any global threshold


def test_classification_demo_ingests_and_mean_intensity_does_not_separate(workspace, tmp_path):
    folder = demo.write_demo("classification", tmp_path / "xray")
    assert sorted(p.name for p in folder.iterdir()) == ["abdomen", "chest"]
    result = ingest(folder, "classification")
    assert result.report.problems == [] and result.report.per_class == {"abdomen": 100, "chest": 100}
    assert result.report.warnings == []                     # no false alarm: no shortcut, copy, imbalance, tiny split
    arrays = [load_split(result.dataset_id, split, 128) for split in ("train", "val", "test")]
    means = np.concatenate([a.images.astype(np.float32).mean(axis=(1, 2, 3)) for a in arrays])
    labels = np.concatenate([a.targets for a in arrays])
    best = max(max(((means > t) == labels).mean(), ((means <= t) == labels).mean()) for t in means)
    assert best < 0.75


def test_demo_is_seeded():
    a, b = np.random.default_rng(4), np.random.default_rng(4)
    assert (demo.xray(a, 64, demo._chest) == demo.xray(b, 64, demo._chest)).all()


def test_ensure_demo_dataset_reuses_the_first_one(workspace, monkeypatch):
    monkeypatch.setitem(demo.DEMOS["segmentation"], "n", 8)     # keep the test quick
    first = demo.ensure_demo_dataset("segmentation")
    assert demo.ensure_demo_dataset("segmentation") == first
    assert load_manifest(first)["name"] == demo.DEMOS["segmentation"]["title"]
    assert len(list_datasets()) == 1


def _ensure_small_demo(home: str, barrier, out) -> None:
    import os
    os.environ["LIGHTBOX_HOME"] = home
    from engine.data import demo as d
    d.DEMOS["segmentation"]["n"] = 8
    barrier.wait()
    out.put(d.ensure_demo_dataset("segmentation"))


def test_processes_asking_for_the_demo_at_once_get_one_dataset(workspace):
    """`make run`, the app and a worker can all ask for the demos at the same moment."""
    import multiprocessing as mp
    import os
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_ensure_small_demo, args=(os.environ["LIGHTBOX_HOME"], barrier, out))
             for _ in range(3)]
    for p in procs:
        p.start()
    ids = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert len(set(ids)) == 1
    assert len(list_datasets()) == 1
