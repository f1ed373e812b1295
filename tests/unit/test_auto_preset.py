"""The Auto preset's choices for datasets of known shape; every choice comes with its sentence.

The timing probe is replaced by a fixed seconds-per-step (except in the probe's own test), so the choices do not
depend on how busy this machine is."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from engine.accounts import users
from engine.accounts.actor import Actor
from engine.classroom import assignments
from engine.cli.main import main
from engine.data.ingest import ingest
from engine.data.manifest import load_manifest
from engine.errors import UserError
from engine.presets import auto
from engine.presets.auto import auto_settings, probe_step_seconds


def fast(values, fp):
    return 0.05


def slow(values, fp):
    return 10.0 * (values["image_size"] / 64) ** 2


def _png(path, pixels) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _explained(preset) -> None:
    assert set(preset.values) == set(preset.reasons)
    assert all(isinstance(s, str) and len(s) > 20 and s.rstrip().endswith((".", ")")) for s in preset.reasons.values())


@pytest.fixture
def small_gray_segmentation(workspace, tmp_path) -> dict:
    """20 grayscale 48 × 64 images, each with one 8 × 8 structure (2 % of the image)."""
    rng = np.random.default_rng(1)
    for k in range(20):
        image = np.clip(110 + rng.normal(0, 12, (48, 64)), 0, 255).astype(np.uint8)
        mask = np.zeros((48, 64), np.uint8)
        y, x = rng.integers(4, 30), rng.integers(4, 40)
        mask[y:y + 8, x:x + 8] = 255
        _png(tmp_path / "seg" / "images" / f"c{k:02d}.png", image)
        _png(tmp_path / "seg" / "masks" / f"c{k:02d}.png", mask)
    return load_manifest(ingest(tmp_path / "seg", task="segmentation").dataset_id)


@pytest.fixture
def imbalanced_classification(workspace, tmp_path) -> dict:
    """27 'normal' and 3 'nodule' images: 9 : 1."""
    rng = np.random.default_rng(2)
    for name, count in (("normal", 27), ("nodule", 3)):
        for k in range(count):
            _png(tmp_path / "imb" / name / f"{k}.png", np.clip(120 + rng.normal(0, 15, (32, 32)), 0, 255)
                 .astype(np.uint8))
    return load_manifest(ingest(tmp_path / "imb", task="classification").dataset_id)


LARGE_RGB = {   # a fingerprint as ingest writes it, for 20 000 balanced RGB photographs of 512 px
    "version": 1, "task": "classification", "images": 20000, "sampled": 2000, "groups": 17000, "channels": 3,
    "split_counts": {"train": 14000, "val": 3000, "test": 3000},
    "size": {s: {"min": 512, "median": 512, "max": 512} for s in ("height", "width", "stored_side")}
    | {"aspect": {"min": 1.0, "median": 1.0, "max": 1.0}},
    "intensity": {"mean": [0.5] * 3, "sd": [0.2] * 3, "p1": [0.02] * 3, "p99": [0.97] * 3,
                  "image_mean_sd": 0.04, "image_mean_cv": 0.08, "sources_differ": False},
    "classes": ["benign", "malignant"], "class_counts": {"benign": 10000, "malignant": 10000}, "imbalance": 1.0}


def test_small_grayscale_segmentation(small_gray_segmentation):
    preset = auto_settings(small_gray_segmentation, device="cpu", budget_minutes=5, step_seconds=fast)
    v = preset.values
    assert (v["arch"], v["pretrained"], v["image_size"]) == ("unet", "none", 64)
    assert v["model_options"] == {"depth": 3, "base": 16}
    assert v["batch_size"] == 3                       # 14 training images: about four steps per epoch
    assert v["augment"] == ["rotate", "zoom"]         # small data, many affordable epochs; never flips
    assert "hflip" not in v["augment"] and "No flips" in preset.reasons["augment"]
    assert (v["loss"], v["class_weights"], v["monitor"]) == ("ce_dice", False, "dice")
    assert (v["optimizer"], v["lr"], v["schedule"]) == ("adam", 1e-3, "cosine")
    assert v["epochs"] == 300 and v["early_stopping"] == 0      # the time limit ends it, the best epoch is kept
    assert "2.1 %" in preset.reasons["loss"] and "at 0.05 s" in preset.reasons["epochs"]
    _explained(preset)


def test_a_slow_device_keeps_segmentation_at_64_px_and_the_smallest_structure_visible(small_gray_segmentation):
    from engine.data.fingerprint import fingerprint
    preset = auto_settings(small_gray_segmentation, device="cpu", budget_minutes=5, step_seconds=slow)
    v = preset.values
    assert v["image_size"] == 64 and "Stepped down" not in preset.reasons["image_size"]    # outlines need pixels
    assert v["augment"] == [] and "too few" in preset.reasons["augment"]
    assert v["early_stopping"] == 0 and "time limit ends the run" in preset.reasons["early_stopping"]
    _explained(preset)
    big = copy.deepcopy(fingerprint(small_gray_segmentation))
    big["size"]["stored_side"] = {"min": 256, "median": 256, "max": 256}
    big["object_px"] = 256                            # 16 px across at 256 px: 96 px keeps it 6 px across
    preset = auto_settings(big, device="cpu", budget_minutes=5, step_seconds=slow)
    assert preset.values["image_size"] == 96 and preset.values["model_options"]["depth"] == 4
    assert "smallest structure stays about 6 px across" in preset.reasons["image_size"]


def _stored_at(manifest: dict, side: int) -> dict:
    """The manifest's fingerprint as if its images were stored at `side` px, the structures the same share of them."""
    from engine.data.fingerprint import fingerprint
    fp = copy.deepcopy(fingerprint(manifest))
    fp["object_px"] *= (side / fp["size"]["stored_side"]["median"]) ** 2
    fp["size"]["stored_side"] = {"min": side, "median": side, "max": side}
    return fp


def per_pixel(seconds_at_64: float):
    """A device whose step time grows with the pixel count, like a CPU's."""
    return lambda values, fp: seconds_at_64 * (values["image_size"] / 64) ** 2


def test_a_fast_device_steps_segmentation_up_to_the_stored_size(small_gray_segmentation):
    """The budget table starts a 5-minute CPU run at 64 px; when the probe shows that at least ENOUGH_EPOCHS fit
    at a larger size, the run trains there, never above the stored size."""
    preset = auto_settings(_stored_at(small_gray_segmentation, 128), device="cpu", budget_minutes=5,
                           step_seconds=per_pixel(0.05))
    assert preset.values["image_size"] == 128 and preset.values["model_options"] == {"depth": 4, "base": 16}
    assert "Stepped up to 128 px" in preset.reasons["image_size"]
    assert "at 128 px, 3 halvings" in preset.reasons["model_options"]         # the reason follows the new shape
    assert preset.values["epochs"] >= auto.ENOUGH_EPOCHS
    _explained(preset)
    big = auto_settings(_stored_at(small_gray_segmentation, 512), device="cpu", budget_minutes=5,
                        step_seconds=per_pixel(0.001))
    assert big.values["image_size"] == 192                  # the CPU's largest size, even with time to spare


def test_segmentation_stays_small_when_a_larger_size_leaves_too_few_epochs(small_gray_segmentation):
    fp = _stored_at(small_gray_segmentation, 128)
    per_step = auto._epoch_seconds(fp, {"batch_size": 3}, 1.0)        # an epoch's seconds for a 1-s step
    step_at_128 = auto.TIME_SHARE * 5 * 60 / (auto.ENOUGH_EPOCHS * per_step) * 1.05    # a few epochs too few
    step_at_64 = step_at_128 / 4
    preset = auto_settings(fp, device="cpu", budget_minutes=5, step_seconds=per_pixel(step_at_64))
    assert preset.values["image_size"] == 96 and "Stepped up to 96 px" in preset.reasons["image_size"]
    preset = auto_settings(fp, device="cpu", budget_minutes=5, step_seconds=per_pixel(step_at_64 * 2.5))
    assert preset.values["image_size"] == 64 and "Stepped up" not in preset.reasons["image_size"]


def test_an_assignment_limit_caps_the_step_up(small_gray_segmentation):
    fp = _stored_at(small_gray_segmentation, 256)
    limits = {"assignment": "hw1", "max_image_size": 96}
    preset = auto_settings(fp, device="cpu", budget_minutes=5, step_seconds=fast, limits=limits)
    assert preset.values["image_size"] == 96


def test_large_rgb_classification(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cpu = auto_settings(copy.deepcopy(LARGE_RGB), device="cpu", budget_minutes=60, step_seconds=fast)
    v = cpu.values
    assert (v["arch"], v["pretrained"], v["image_size"], v["batch_size"]) == ("resnet18", "none", 128, 16)
    assert "not on this machine" in cpu.reasons["pretrained"]
    assert v["augment"] == []                         # 14 000 images give variety enough
    assert (v["loss"], v["class_weights"], v["monitor"]) == ("ce", False, "accuracy")
    assert v["epochs"] == int(0.85 * 3600 / ((875 + 188 / 3) * 0.05 * 1.1))
    _explained(cpu)
    short = auto_settings(copy.deepcopy(LARGE_RGB), device="cpu", budget_minutes=15, step_seconds=fast)
    assert short.values["batch_size"] == 8                      # more updates in a short budget on a CPU
    assert short.values["image_size"] == 128 and "Stepped down" not in short.reasons["image_size"]
    assert "never shrunk below 128 px" in short.reasons["image_size"]      # a small finding must stay visible
    gpu = auto_settings(copy.deepcopy(LARGE_RGB), device="cuda", budget_minutes=15, step_seconds=fast)
    assert (gpu.values["image_size"], gpu.values["batch_size"]) == (256, 32)
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "resnet18-f37072fd.pth").write_bytes(b"present; the hash is checked when a run loads it")
    pretrained = auto_settings(copy.deepcopy(LARGE_RGB), device="cpu", budget_minutes=60, step_seconds=fast)
    assert pretrained.values["pretrained"] == "imagenet" and "ImageNet weights are on" in pretrained.reasons[
        "pretrained"]


def test_imbalanced_classification_weights_classes_and_picks_by_balanced_accuracy(imbalanced_classification):
    preset = auto_settings(imbalanced_classification, device="cpu", budget_minutes=15, step_seconds=fast)
    v = preset.values
    assert (v["loss"], v["class_weights"], v["monitor"]) == ("ce", True, "balanced_accuracy")
    assert "9.0×" in preset.reasons["class_weights"]
    assert "hflip" not in v["augment"] and "heart lies on the left" in preset.reasons["augment"]
    # few images: augmented, but by whole-pixel shifts; a rotation or zoom would blur a few-pixel finding
    assert (v["augment"], v["augment_params"]) == (["shift"], {"shift": {"fraction": 0.1}})
    assert "whole pixels" in preset.reasons["augment"] and "No rotations or zooms" in preset.reasons["augment"]
    _explained(preset)


def test_a_shift_keeps_every_pixel_of_a_small_finding():
    """Why classification gets shifts: the shifted image holds the original pixels exactly, a rotation's does not."""
    import torch

    from engine.training.augment import build_pipeline
    image = torch.zeros(1, 1, 32, 32)
    image[0, 0, 14:17, 14:17] = 1.0                    # a 3-pixel finding with sharp edges
    torch.manual_seed(0)
    for _ in range(10):
        shifted = build_pipeline(["shift"], auto.GEOMETRY["classification"]).batch(image.clone(), None)[0]
        assert sorted(shifted.flatten().tolist())[-9:] == [1.0] * 9 and shifted.sum() == 9
    rotated = build_pipeline(["rotate"], {"rotate": {"degrees": 10.0}}).batch(image.clone(), None)[0]
    assert rotated.max() < 1.0 or rotated.sum() != 9   # resampled: the edge is blurred


def test_two_intensity_sources_turn_on_brightness_and_contrast_jitter():
    fp = copy.deepcopy(LARGE_RGB)
    fp["intensity"] |= {"image_mean_cv": 0.4, "sources_differ": True}
    preset = auto_settings(fp, device="cpu", budget_minutes=60, step_seconds=fast)
    assert preset.values["augment"] == ["brightness", "contrast"]
    assert "40 %" in preset.reasons["augment"]


def test_a_budget_out_of_range_is_one_sentence():
    with pytest.raises(UserError, match="time budget must be between"):
        auto_settings(copy.deepcopy(LARGE_RGB), device="cpu", budget_minutes=0, step_seconds=fast)


def test_the_timing_probe_measures_real_steps():
    fp = copy.deepcopy(LARGE_RGB) | {"channels": 1}
    values = {"arch": "lenet5", "image_size": 32, "batch_size": 4}
    step, augment = probe_step_seconds(values, fp, steps=2, device="cpu")
    assert 0 < step < 10 and 0 < augment < 1


def _cli(*args: str, home) -> subprocess.CompletedProcess:
    env = {**os.environ, "LIGHTBOX_HOME": str(home)}
    env.pop("LIGHTBOX_DB_URL", None)
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, env=env,
                          timeout=300, check=False)


def test_cli_preset_auto_stores_its_settings_and_explicit_flags_win(tiny_segmentation, lightbox_env):
    from engine.runs import store
    trained = _cli("train", "--dataset", tiny_segmentation, "--preset", "auto", "--budget-minutes", "1",
                   "--epochs", "1", "--json", "--quiet", home=lightbox_env)
    assert trained.returncode == 0, trained.stderr
    result = json.loads(trained.stdout.strip().splitlines()[-1])
    assert result["status"] == "done" and result["epochs"] == 1
    shown = result["preset"]
    assert shown["name"] == "auto" and shown["budget_minutes"] == 1 and shown["overridden"] == ["epochs"]
    assert shown["values"]["epochs"] == 1 and set(shown["reasons"]) == set(shown["values"])
    (run,) = store.list_runs()
    config = run["config"]
    assert config["preset"] == shown
    assert (config["arch"], config["schedule"], config["loss"]) == ("unet", "cosine", "ce_dice")
    assert config["image_size"] == shown["values"]["image_size"] == 32      # the 32-px images are not upscaled
    assert config["model_options"] == {"depth": 2, "base": 16}

    queued = _cli("submit", "--dataset", tiny_segmentation, "--preset", "auto", "--batch-size", "2",
                  "--augment", "vflip", "--json", home=lightbox_env)
    assert queued.returncode == 0, queued.stderr
    run = store.get_run(json.loads(queued.stdout.strip().splitlines()[-1])["run_id"])
    config = run["config"]
    assert (config["batch_size"], config["augment"], config["augment_params"]) == (2, ["vflip"], {})
    assert config["preset"]["budget_minutes"] == 15
    assert config["preset"]["overridden"] == ["augment", "batch_size"]
    assert config["schedule"] == "cosine" and config["epochs"] == config["preset"]["values"]["epochs"]


def test_cli_budget_without_a_preset_is_one_sentence(tiny_segmentation, lightbox_env):
    proc = _cli("train", "--dataset", tiny_segmentation, "--budget-minutes", "5", home=lightbox_env)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "--budget-minutes goes with --preset auto" in proc.stderr


def test_a_students_auto_preset_stays_within_the_assignments_limits(small_gray_segmentation, monkeypatch, capsys):
    """Auto for a student fills settings the assignment accepts (capped, and said so) instead of ones it refuses."""
    limits = {"assignment": "hw1", "max_epochs": 12, "max_image_size": 48}
    free = auto_settings(small_gray_segmentation, device="cpu", budget_minutes=5, step_seconds=fast)
    capped = auto_settings(small_gray_segmentation, device="cpu", budget_minutes=5, step_seconds=fast, limits=limits)
    assert free.values["epochs"] > 12 and free.values["image_size"] > 48          # the limits bind here
    assert (capped.values["epochs"], capped.values["image_size"]) == (12, 48)
    assert capped.values["model_options"]["depth"] == 3                         # the U-Net fits the smaller size
    assert "assignment 'hw1' allows no more epochs" in capped.reasons["epochs"]
    assert "assignment 'hw1' allows images up to 48 px" in capped.reasons["image_size"]
    _explained(capped)

    prof, ana = Actor("prof", "instructor"), Actor("ana", "student")
    users.add_user("prof", "instructor", "pw-prof-123")
    users.add_user("ana", "student", "pw-ana-1234")
    dataset_id = small_gray_segmentation["id"]
    assignments.create_assignment(prof, dataset_id, "hw1", max_epochs=12, max_image_size=48)
    assert assignments.preset_limits(ana, dataset_id) == limits
    assert assignments.preset_limits(prof, dataset_id) is None and assignments.preset_limits(None, dataset_id) is None
    monkeypatch.setattr(auto, "probe_step_seconds", lambda values, fp, **where: 0.05)
    code = main(["submit", "--dataset", dataset_id, "--preset", "auto", "--budget-minutes", "5", "--as", "ana",
                 "--json", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err                                   # queued, not refused by the limits it was given
    preset = json.loads(out.strip().splitlines()[-1])["preset"]
    assert (preset["values"]["epochs"], preset["values"]["image_size"]) == (12, 48)
