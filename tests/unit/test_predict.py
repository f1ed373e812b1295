"""Prediction: same numbers from files as from arrays, Grad-CAM on a case with a known answer, Dice vs masks,
DICOM windowing as at training, readable errors, ZIP batches and the CLI."""
from __future__ import annotations

import json
import os
import zipfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from engine.config import RunConfig
from engine.errors import UserError
from engine.runs import execute
from engine.runs.submit import create_run

S = 32      # image size of every tiny run here


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """One workspace for the module: training the shared runs once keeps the file fast on 2 cores."""
    home = tmp_path_factory.mktemp("predict")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIGHTBOX_HOME", str(home / "ws"))
        if not os.environ.get("LIGHTBOX_DB_URL", "").startswith("postgresql"):
            mp.delenv("LIGHTBOX_DB_URL", raising=False)
        yield home


def _train(dataset_id: str, arch: str, **overrides) -> str:
    config = dict(dataset_id=dataset_id, arch=arch, epochs=2, batch_size=8, image_size=S, lr=3e-3, preview_samples=0)
    config.update(overrides)
    run_id = create_run(RunConfig(**config), status="running")
    run = execute.run_job(run_id)
    assert run["status"] == "done", run["message"]
    return run_id


@pytest.fixture(scope="module")
def seg(workspace):
    from engine.data.demo import write_demo
    from engine.data.ingest import ingest
    src = write_demo("segmentation", workspace / "seg-src", n=16, size=48, seed=3)
    dataset_id = ingest(src, task="segmentation").dataset_id
    return _train(dataset_id, "unet", model_options={"depth": 2, "base": 8}), src


@pytest.fixture(scope="module")
def cls(workspace):
    from engine.data.demo import write_demo
    from engine.data.ingest import ingest
    src = write_demo("classification", workspace / "cls-src", n=16, size=40, seed=3)
    return _train(ingest(src, task="classification").dataset_id, "lenet5"), src


def _png(array: np.ndarray) -> bytes:
    buffer = BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _quantised(predictor, key: str) -> np.ndarray:
    """A stored test image rounded to 8 bits: exactly what an 8-bit PNG of it reads back as."""
    from engine.data.dataset import load_sample
    image, _ = load_sample(predictor.config.dataset_id, key)
    return np.round(image * 255).astype(np.uint8)


# ---- same answer from a file as from memory ------------------------------------------------------------

@pytest.mark.parametrize("which", ["seg", "cls"])
def test_png_file_gives_the_in_memory_prediction(which, request):
    from engine.inference.predict import held_out_samples, load_predictor
    run_id, _ = request.getfixturevalue(which)
    predictor = load_predictor(run_id)
    key = held_out_samples(predictor.config.dataset_id)[0]["key"]
    pixels = _quantised(predictor, key)
    from_file = predictor.predict_file(_png(pixels[0]), "sample.png")
    assert len(from_file) == 1
    in_memory = predictor.predict_array(pixels.astype(np.float32) / 255)
    if which == "seg":
        assert from_file[0].label_map.shape == pixels.shape[1:]      # at the original size, not the model's
        np.testing.assert_array_equal(from_file[0].label_map, in_memory.label_map)
        assert from_file[0].areas == in_memory.areas
    else:
        assert from_file[0].probabilities == in_memory.probabilities
        assert abs(sum(in_memory.probabilities.values()) - 1) < 1e-5


def test_predictor_is_cached_until_the_checkpoint_changes(seg):
    from engine.inference.predict import checkpoint_path, load_predictor
    run_id, _ = seg
    first = load_predictor(run_id)
    assert load_predictor(run_id) is first
    path = checkpoint_path(run_id)
    os.utime(path, (path.stat().st_atime, path.stat().st_mtime + 5))
    assert load_predictor(run_id) is not first


def test_tta_averages_softmax_over_flips(seg):
    from engine.inference.predict import load_predictor
    predictor = load_predictor(seg[0])
    x = torch.rand(1, 1, S, S)
    with torch.no_grad():
        plain = predictor.model(x).softmax(1)
        flipped = predictor.model(x.flip(-1)).softmax(1).flip(-1)
    np.testing.assert_allclose(predictor.scores(x, tta=True), (plain + flipped) / 2, atol=1e-5)
    assert predictor.scores(x, tta=("hflip", "vflip")).shape == (1, 2, S, S)


# ---- ground truth -------------------------------------------------------------------------------------

def test_dice_against_a_mask_matches_engine_metrics(seg):
    from engine.inference.predict import load_predictor
    from engine.metrics import dice_per_class, iou_per_class
    run_id, src = seg
    predictor = load_predictor(run_id)
    image, mask = src / "images" / "case_001.png", src / "masks" / "case_001.png"
    result = predictor.predict_file(image, mask=mask)[0]
    truth = (np.asarray(Image.open(mask)) > 0).astype(np.uint8)
    dice = dice_per_class(result.label_map, truth, 2)
    assert result.scores["dice_foreground"] == pytest.approx(dice[1])
    assert result.scores["dice_mean"] == pytest.approx(dice[1])          # mean over foreground classes
    assert result.scores["iou_background"] == pytest.approx(iou_per_class(result.label_map, truth, 2)[0])
    # the same mask at twice the resolution is resized (nearest) and scores the same
    doubled = np.kron(truth, np.ones((2, 2), dtype=np.uint8)) * 255
    again = predictor.predict_file(image, mask=_png(doubled), mask_name="big.png")[0]
    assert again.scores == result.scores


def test_given_mask_is_kept_and_drawn_as_a_green_outline_over_the_prediction(seg):
    """The comparison picture: predicted mask filled, the given mask's border (at the image's size) in green."""
    from engine.inference.predict import load_predictor
    from engine.visualize.images import TRUTH_OUTLINE, border
    run_id, src = seg
    predictor = load_predictor(run_id)
    image = src / "images" / "case_001.png"
    truth = (np.asarray(Image.open(src / "masks" / "case_001.png")) > 0).astype(np.uint8)
    doubled = np.kron(truth, np.ones((2, 2), dtype=np.uint8)) * 255        # given at twice the size
    result = predictor.predict_file(image, mask=_png(doubled), mask_name="big.png")[0]
    np.testing.assert_array_equal(result.truth, truth)
    picture = result.compare(0.5)
    assert picture.shape == (48, 48, 3)
    np.testing.assert_array_equal((picture == TRUTH_OUTLINE).all(-1), border(truth))
    unmarked = ~border(truth)
    np.testing.assert_array_equal(picture[unmarked], result.blend(0.5)[unmarked])
    plain = predictor.predict_file(image)[0]                               # no mask: nothing to compare
    assert plain.truth is None and np.array_equal(plain.compare(0.5), plain.blend(0.5))


def test_grey_level_masks_score_as_the_training_masks_were_read(workspace, seg):
    """A model trained on 0/85/170/255 masks is scored against a mask saved the same way."""
    from engine.data.ingest import ingest
    from engine.inference.predict import load_predictor
    _, src = seg
    grey = workspace / "grey-src"
    for folder in ("images", "masks"):
        (grey / folder).mkdir(parents=True)
    for image in sorted((src / "images").glob("*.png")):
        inside = np.asarray(Image.open(src / "masks" / image.name)) > 0
        labels = np.where(inside, 3, 0).astype(np.uint8)
        labels[:6, :6] = 1                                    # two more classes in a corner of every slice
        labels[-6:, -6:] = 2
        (grey / "images" / image.name).write_bytes(image.read_bytes())
        Image.fromarray(labels * 85).save(grey / "masks" / image.name)
    dataset_id = ingest(grey, task="segmentation").dataset_id
    predictor = load_predictor(_train(dataset_id, "unet", epochs=1, model_options={"depth": 2, "base": 8}))
    name = "case_001.png"
    as_grey = predictor.predict_file(grey / "images" / name, mask=grey / "masks" / name)[0]
    truth = np.asarray(Image.open(grey / "masks" / name)) // 85
    as_labels = predictor.predict_file(grey / "images" / name, mask=_png(truth), mask_name="labels.png")[0]
    assert as_grey.scores == as_labels.scores and "dice_class 3" in as_grey.scores


def test_stored_masks_are_scored_as_class_indices_not_mapped_again(seg):
    """Test-split masks are class indices already; the dataset's grey-level map must not touch them."""
    from engine.data.dataset import load_manifest, load_sample
    from engine.inference.predict import held_out_samples, load_predictor
    from engine.metrics import dice_per_class
    run_id, _ = seg
    predictor = load_predictor(run_id)
    dataset_id = predictor.config.dataset_id
    sample = held_out_samples(dataset_id)[0]
    image, labels = load_sample(dataset_id, sample["key"])
    assert load_manifest(dataset_id)["num_classes"] == 2 and set(np.unique(labels)) == {0, 1}
    levels = dict(predictor.info.get("mask_levels") or {})
    predictor.info["mask_levels"] = {"0": 0, "1": 0, "255": 1}      # raw value 1 would become background
    try:
        result = predictor.predict_stored(image, labels)
    finally:
        predictor.info["mask_levels"] = levels
    expected = dice_per_class(result.label_map, labels, 2)[1]
    assert result.scores["dice_foreground"] == pytest.approx(expected)


def test_mask_of_another_shape_is_refused(seg):
    from engine.inference.predict import load_predictor
    predictor = load_predictor(seg[0])
    image = seg[1] / "images" / "case_001.png"
    with pytest.raises(UserError, match=r"mask .* is 20×10 pixels but the image is 48×48"):
        predictor.predict_file(image, mask=np.zeros((10, 20), np.uint8))
    with pytest.raises(UserError, match="only 2 classes"):
        predictor.predict_file(image, mask=np.full((48, 48), 3, np.uint8))


# ---- readable errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("data, name, expected", [
    (b"shopping list", "notes.txt", "notes.txt is not an image Lightbox can read (PNG, JPEG, TIFF, BMP or DICOM)."),
    (_png(np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8))[:300], "cut.png",
     "cut.png is not a readable image"),
    (_png(np.zeros((8, 12), np.uint8)), "tiny.png", "tiny.png is only 12×8 pixels; use images of at least 16 px"),
], ids=["not-an-image", "truncated", "too-small"])
def test_unusable_uploads_raise_one_sentence(cls, data, name, expected):
    from engine.inference.predict import load_predictor
    with pytest.raises(UserError) as err:
        load_predictor(cls[0]).predict_file(data, name)
    message = str(err.value)
    assert message.startswith(expected) and message.endswith(".") and "\n" not in message


def test_missing_run_is_a_user_error(workspace):
    from engine.inference.predict import load_predictor
    with pytest.raises(UserError, match="no saved model"):
        load_predictor("no-such-run")


# ---- DICOM --------------------------------------------------------------------------------------------

def _dicom_variant(path: Path, shift: int, patient: str) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    pixels = ds.pixel_array.copy()
    pixels[:8, :8] += shift                 # ingest drops duplicate files: make each copy a little different
    ds.PixelData = pixels.tobytes()
    ds.PatientID = patient
    ds.save_as(path)


def _large_png(path: Path, seed: int) -> None:
    """Wider than the stored-size cap (1024 px), so ingest scales it down before storing it."""
    pixels = np.random.default_rng(seed).integers(0, 255, (300, 1100), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _cache_matches_predictor(src: Path) -> None:
    """Ingest src; the predictor's input for each file must equal that file's entry in the training cache."""
    from engine.data.dataset import load_manifest, load_split, to_model_input
    from engine.data.ingest import ingest
    from engine.data.io import read_image
    from engine.inference.predict import Predictor
    from engine.models.builder import build_model
    from engine.models.network import LightboxModel
    dataset_id = ingest(src, task="classification").dataset_id
    manifest = load_manifest(dataset_id)
    config = RunConfig(dataset_id=dataset_id, arch="lenet5", task="classification", image_size=S)
    predictor = Predictor(LightboxModel(build_model("lenet5", 1, 2), [0.0], [1.0]), config, manifest,
                          torch.device("cpu"))
    checked = 0
    for split in ("train", "val", "test"):
        cached = load_split(dataset_id, split, S)
        for key, expected in zip(cached.keys, cached.images):
            source = next(s["source"] for s in manifest["samples"] if s["key"] == key)
            got = predictor.preprocess(predictor.read(src / source)[0]).numpy()
            np.testing.assert_array_equal(got, expected.astype(np.float32))
            direct = to_model_input(read_image(src / source)[0], 1, S)
            np.testing.assert_allclose(got, direct, atol=2e-3)     # only float16 storage rounding apart
            checked += 1
    assert checked == 6


def test_dicom_is_windowed_exactly_as_for_training(workspace):
    src = workspace / "dicom-src"
    for i, label in enumerate(["a", "a", "a", "b", "b", "b"]):
        (src / label).mkdir(parents=True, exist_ok=True)
        _dicom_variant(src / label / f"ct{i}.dcm", shift=10 * (i + 1), patient=f"P{i}")
    _cache_matches_predictor(src)


def test_images_above_the_size_cap_are_prepared_as_for_training(workspace):
    src = workspace / "large-src"
    for i, label in enumerate(["a", "a", "a", "b", "b", "b"]):
        (src / label).mkdir(parents=True, exist_ok=True)
        _large_png(src / label / f"wide{i}.png", seed=i)
    _cache_matches_predictor(src)


def test_multiframe_dicom_gives_one_prediction_per_frame(cls):
    from engine.inference.predict import load_predictor
    path = Path(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    results = load_predictor(cls[0]).predict_file(path)
    assert [r.frame for r in results] == [0, 1]
    assert all(r.label in r.classes for r in results)


# ---- Grad-CAM -----------------------------------------------------------------------------------------

def _square_picture(rng: np.random.Generator, positive: bool) -> np.ndarray:
    """Noise and a bright 8-px square: in the top-left quadrant for positives, the bottom-right for negatives. The
    square's place is the only signal, so a model that tells them apart must look at where it is (with a square
    in positives only, a model may answer from 'anything bright anywhere', and Grad-CAM then has nothing to show)."""
    image = rng.uniform(0, 0.5, (S, S))
    y, x = rng.integers(1, S // 2 - 9, size=2) + (0 if positive else S // 2)
    image[y:y + 8, x:x + 8] = 1.0
    return (image * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def squares(workspace):
    from engine.data.ingest import ingest
    rng = np.random.default_rng(0)
    src = workspace / "squares"
    for label, positive in (("pos", True), ("neg", False)):
        (src / label).mkdir(parents=True)
        for i in range(40):
            Image.fromarray(_square_picture(rng, positive)).save(src / label / f"{label}_{i:03d}.png")
    dataset_id = ingest(src, task="classification").dataset_id
    return _train(dataset_id, "lenet5", epochs=10, batch_size=16)


def test_gradcam_points_at_the_discriminative_quadrant(squares):
    from engine.data.dataset import load_sample
    from engine.inference.predict import held_out_samples, load_predictor
    predictor = load_predictor(squares)
    positives = [s for s in held_out_samples(predictor.config.dataset_id) if s["source"].startswith("pos/")]
    assert positives
    for sample in positives:
        image, _ = load_sample(predictor.config.dataset_id, sample["key"])
        cam = predictor.explain(image, class_index=predictor.classes.index("pos"))
        assert cam.heatmap.shape == (S, S) and cam.overlay.shape == (S, S, 3)
        assert cam.note == f"Grad-CAM used the last layer `features` (5×5) at {S} px input."
        assert 0.0 <= cam.heatmap.min() and cam.heatmap.max() == pytest.approx(1.0)
        peak_y, peak_x = np.unravel_index(cam.heatmap.argmax(), cam.heatmap.shape)
        assert peak_y < S // 2 and peak_x < S // 2, sample["source"]
        rows, cols = cam.heatmap.sum(1), cam.heatmap.sum(0)
        centroid = (rows @ np.arange(S) / rows.sum(), cols @ np.arange(S) / cols.sum())
        print(sample["source"], (peak_y, peak_x), centroid)
        assert max(centroid) < S / 2, (sample["source"], centroid)


def test_gradcam_leaves_the_model_as_it_was_and_refuses_the_mlp():
    from engine.models.builder import build_model
    from engine.models.network import LightboxModel
    from engine.visualize.gradcam import NO_CONV, grad_cam, saliency
    model = LightboxModel(build_model("lenet5", 1, 2), [0.5], [0.25]).eval()
    heat, index, layer = grad_cam(model, torch.rand(1, S, S))
    assert heat.shape == (S, S) and layer == "net.features" and index in (0, 1)
    assert all(not m._forward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters()) and not model.training
    mlp = LightboxModel(build_model("mlp", 1, 2), [0.5], [0.25]).eval()
    with pytest.raises(UserError) as err:
        grad_cam(mlp, torch.rand(1, S, S))
    assert str(err.value) == NO_CONV
    assert saliency(mlp, torch.rand(1, S, S)).shape == (S, S)      # the fallback works without convolutions


def test_gradcam_is_for_classification_only(seg):
    from engine.inference.predict import load_predictor
    with pytest.raises(UserError, match="Grad-CAM explains classification"):
        load_predictor(seg[0]).explain(np.zeros((1, S, S), np.float32))


# ---- batches and the CLI ------------------------------------------------------------------------------

def test_zip_batch_writes_csv_and_masks(seg, tmp_path):
    import csv

    from engine.inference.batch import predict_zip
    run_id, src = seg
    archive = tmp_path / "batch.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ("case_001", "case_002"):
            zf.write(src / "images" / f"{name}.png", f"images/{name}.png")
        zf.write(src / "masks" / "case_001.png", "masks/case_001.png")
        zf.writestr("README.txt", "not an image")
        zf.writestr("__MACOSX/._case_001.png", "resource fork")
    rows = list(csv.DictReader(open(predict_zip(run_id, archive, tmp_path / "out"))))
    assert [r["file"] for r in rows] == ["images/case_001.png", "images/case_002.png", "README.txt"]
    assert rows[0]["dice_foreground"] != "" and rows[1]["dice_foreground"] == ""
    assert "not an image Lightbox can read" in rows[2]["error"]
    mask = np.asarray(Image.open(tmp_path / "out" / rows[0]["mask_path"]))
    assert mask.shape == (48, 48) and set(np.unique(mask)) <= {0, 255}


def test_classification_zip_predicts_images_in_folders_named_like_mask_folders(cls, tmp_path):
    import csv

    from engine.inference.batch import predict_zip
    run_id, src = cls
    first = sorted(src.rglob("*.png"))[0]
    archive = tmp_path / "batch.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(first, "labels/a.png")                 # a folder name a segmentation ZIP would use for masks
    rows = list(csv.DictReader(open(predict_zip(run_id, archive, tmp_path / "out"))))
    assert [r["file"] for r in rows] == ["labels/a.png"] and rows[0].get("error", "") == ""
    assert rows[0]["prediction"] in ("abdomen", "chest")


def test_zip_with_an_escaping_path_is_refused(seg, tmp_path):
    from engine.inference.batch import predict_zip
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../outside.png", _png(np.zeros((32, 32), np.uint8)))
    with pytest.raises(UserError, match="unsafe path"):
        predict_zip(seg[0], archive, tmp_path / "out")


def test_cli_predict_prints_results_and_writes_masks(seg, tmp_path, capsys):
    from engine.cli.main import main
    run_id, src = seg
    image = src / "images" / "case_003.png"
    assert main(["predict", "--run", run_id, str(image), "--out", str(tmp_path), "--tta", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    entry = result["results"][0]
    assert entry["file"] == str(image) and 0.0 <= entry["foreground_fraction"] <= 1.0
    assert Path(entry["mask_path"]).exists() and (tmp_path / "results.csv").exists()
    assert main(["predict", "--run", run_id, str(tmp_path / "results.csv"), "--json"]) == 2
    assert "not an image Lightbox can read" in capsys.readouterr().err


def test_masks_are_matched_to_images_with_or_without_a_suffix():
    from engine.inference.batch import masks_by_image_stem
    found = masks_by_image_stem([("a_mask.png", 1), ("b.png", 2), ("b_gt.png", 3), ("c-seg.dcm", 4)])
    assert found["a"] == 1 and found["b"] == 2 and found["c"] == 4     # the exact name wins for b
