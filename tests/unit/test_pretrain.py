"""Issue 15 item 3: unlabeled images in, autoencoder pre-training, and a fine-tune that really starts from it."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.accounts import users
from engine.accounts.actor import Actor
from engine.cli.main import main
from engine.config import RunConfig
from engine.data.demo import cardiac_slice
from engine.errors import UserError
from engine.models import weights
from engine.models.builder import build_model
from engine.pretrain import library
from engine.pretrain.autoencoder import pretrain
from engine.pretrain.unlabeled import (
    STORED_SIZE,
    ingest_unlabeled,
    load_unlabeled,
    unlabeled_dir,
)
from engine.training.trainer import Trainer

SMALL_UNET = {"depth": 2, "base": 8}


def _images(folder: Path, n: int = 10, size: int = 32, seed: int = 0) -> Path:
    """n cardiac-like PNGs without masks, plus a damaged PNG and a text file."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image, _ = cardiac_slice(rng, size)
        Image.fromarray(image).save(folder / f"slice_{i:02d}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a picture" * 5)
    (folder / "notes.txt").write_text("acquired on the old scanner")
    return folder


@pytest.fixture
def unlabeled(lightbox_env) -> str:
    return ingest_unlabeled(_images(lightbox_env.parent / "unlabeled-src"), name="extra slices")


def test_unlabeled_images_are_stored_and_an_unreadable_file_is_skipped_with_a_sentence(unlabeled):
    manifest = load_unlabeled(unlabeled)
    assert manifest["images"] == 10 and manifest["channels"] == 1 and manifest["skipped"] == 2
    stored = np.load(unlabeled_dir(unlabeled) / "images.npy")
    assert stored.shape == (10, 1, STORED_SIZE, STORED_SIZE) and 0 <= stored.min() and stored.max() <= 1
    broken = next(p for p in manifest["problems"] if p["file"] == "broken.png")
    assert broken["kind"] == "unreadable"
    assert broken["message"].startswith("broken.png is not a readable image") and "\n" not in broken["message"]
    assert "skipped" in broken["message"]
    assert any(p["file"] == "notes.txt" and p["kind"] == "unsupported" for p in manifest["problems"])


def test_a_zip_goes_through_the_upload_rules_and_nothing_readable_is_refused(lightbox_env):
    folder = _images(lightbox_env.parent / "src", n=3)
    archive = lightbox_env.parent / "slices.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for file in folder.iterdir():
            out.write(file, f"scans/{file.name}")
    assert load_unlabeled(ingest_unlabeled(archive))["images"] == 3
    escaping = lightbox_env.parent / "escape.zip"
    with zipfile.ZipFile(escaping, "w") as out:
        out.writestr("../../evil.png", b"x")
    with pytest.raises(UserError, match="outside the upload"):
        ingest_unlabeled(escaping)
    junk = lightbox_env.parent / "junk"
    junk.mkdir()
    (junk / "a.png").write_bytes(b"garbage")
    with pytest.raises(UserError, match="No readable image was found"):
        ingest_unlabeled(junk)


def test_set_and_encoder_ids_are_looked_up_never_followed(lightbox_env):
    for bad in ("../datasets", "x" * 100_000, "no-such-set"):
        with pytest.raises(UserError, match="does not exist"):
            unlabeled_dir(bad)
        with pytest.raises(UserError, match="does not exist"):
            library.encoder_path(bad)


def test_pretraining_lowers_the_reconstruction_loss(unlabeled):
    encoder = pretrain(unlabeled, "unet", image_size=32, epochs=4, mode="denoising", device="cpu", seed=0,
                       batch_size=4, lr=3e-3, model_options=SMALL_UNET)
    info = library.load_encoder(encoder)
    assert len(info["history"]) == 4 and info["history"][-1] < info["history"][0]
    assert info["loss"] == info["history"][-1] and info["input_loss"] > 0
    assert (info["arch"], info["channels"], info["image_size"], info["mode"], info["unlabeled_id"]) == \
        ("unet", 1, 32, "denoising", unlabeled)
    state = torch.load(library.encoder_path(encoder), weights_only=True)
    assert "head.weight" not in state and "down.0.0.weight" in state and "up.0.up.weight" in state


def test_masked_mode_trains_too(unlabeled):
    encoder = pretrain(unlabeled, "unet", image_size=32, epochs=2, mode="masked", device="cpu", seed=1,
                       batch_size=4, model_options=SMALL_UNET)
    assert library.load_encoder(encoder)["mode"] == "masked"


def _net_state(config: RunConfig, run_dir: Path) -> dict[str, torch.Tensor]:
    return Trainer(config, run_dir).model.net.state_dict()


def test_the_fine_tune_starts_from_the_pretrained_weights(unlabeled, tiny_segmentation, lightbox_env):
    encoder = pretrain(unlabeled, "unet", image_size=32, epochs=1, device="cpu", seed=0, batch_size=4,
                       model_options=SMALL_UNET)
    saved = torch.load(library.encoder_path(encoder), weights_only=True)
    common = {"dataset_id": tiny_segmentation, "arch": "unet", "image_size": 32, "epochs": 1, "device": "cpu",
              "seed": 0, "model_options": SMALL_UNET}
    tuned = _net_state(RunConfig(**common, pretrained=f"encoder:{encoder}"), lightbox_env / "a")
    by_path = _net_state(RunConfig(**common, pretrained=str(library.encoder_path(encoder))), lightbox_env / "c")
    scratch = _net_state(RunConfig(**common), lightbox_env / "b")
    weights_ = [k for k in saved if k.endswith(".weight")]
    assert len(weights_) >= 8
    for key in saved:
        assert torch.equal(tuned[key], saved[key]) and torch.equal(by_path[key], saved[key]), key
    assert all(not torch.equal(scratch[k], saved[k]) for k in weights_)
    # the output layer is not in the file: 2 classes here, rebuilt as a fresh layer
    assert tuned["head.weight"].shape[0] == 2 and "head.weight" not in saved


def test_the_encoder_value_resolves_to_its_weights_file(unlabeled):
    encoder = pretrain(unlabeled, "unet", image_size=32, epochs=1, device="cpu", batch_size=4,
                       model_options=SMALL_UNET)
    assert library.resolve_encoder(f"encoder:{encoder}") == library.encoder_path(encoder)
    assert library.resolve_encoder("imagenet") is None and library.resolve_encoder("/some/file.pt") is None
    with pytest.raises(UserError, match="does not exist"):
        library.resolve_encoder("encoder:../../runs")
    model = build_model("unet", 1, 3, pretrained=str(library.resolve_encoder(f"encoder:{encoder}")),
                        options=SMALL_UNET)
    assert not model.weights_report.skipped and model.weights_report.untouched == ["head.weight", "head.bias"]


def test_a_run_from_an_unknown_or_mismatched_encoder_is_refused_before_it_is_queued(unlabeled, tiny_segmentation):
    from engine.preflight import check_config
    encoder = pretrain(unlabeled, "unet", image_size=32, epochs=1, device="cpu", batch_size=4,
                       model_options=SMALL_UNET)
    common = {"dataset_id": tiny_segmentation, "image_size": 64, "epochs": 1}
    check_config(RunConfig(**common, arch="unet", pretrained=f"encoder:{encoder}"))
    with pytest.raises(UserError, match="Pre-trained encoder 'nope' does not exist"):
        check_config(RunConfig(**common, arch="unet", pretrained="encoder:nope"))
    with pytest.raises(UserError, match=f"Pre-trained encoder {encoder} was made for unet, and this run is a "):
        check_config(RunConfig(**common, arch="fcn_simple", pretrained=f"encoder:{encoder}"))


def test_a_classification_backbone_keeps_its_trunk_only(unlabeled):
    encoder = pretrain(unlabeled, "resnet18", image_size=32, epochs=1, device="cpu", batch_size=4)
    saved = torch.load(library.encoder_path(encoder), weights_only=True)
    assert "conv1.weight" in saved and "layer4.1.bn2.running_mean" in saved
    assert not any(key.startswith(("fc.", "decoder", "out.", "trunk.")) for key in saved)
    model = build_model("resnet18", 1, 2)
    report = weights.load_file(model, library.encoder_path(encoder))
    assert sorted(report.loaded) == sorted(saved) and set(report.untouched) == {"fc.weight", "fc.bias"}


def test_unsuitable_requests_are_refused_in_one_sentence(unlabeled):
    with pytest.raises(UserError, match="cannot be pre-trained"):
        pretrain(unlabeled, "xception_small", image_size=32, epochs=1, device="cpu")
    for kwargs, message in (({"mode": "colourise"}, "mode must be one of"), ({"image_size": 512}, "up to|from"),
                            ({"epochs": 0}, "Epochs")):
        with pytest.raises(UserError, match=message):
            pretrain(unlabeled, "unet", **{"image_size": 32, "epochs": 1, "device": "cpu", **kwargs})


def test_students_see_their_own_and_their_instructors_encoders(unlabeled):
    for name, role in (("teach", "instructor"), ("alice", "student"), ("bob", "student")):
        users.add_user(name, role, f"password of {name}")
    made = {who: pretrain(unlabeled, "unet", image_size=32, epochs=1, device="cpu", batch_size=4,
                          model_options=SMALL_UNET, owner=who) for who in ("teach", "alice", "bob")}
    seen = {e["id"] for e in library.list_encoders(Actor("alice", "student"))}
    assert seen == {made["teach"], made["alice"]}
    assert {e["id"] for e in library.list_encoders()} == set(made.values())
    assert set(library.list_encoders()[0]) >= {"id", "name", "arch", "created", "owner"}
    with pytest.raises(UserError, match="belongs to another student"):
        library.check_encoder(Actor("alice", "student"), made["bob"])


def _cli(capsys, *argv: str) -> tuple[int, dict | str]:
    code = main([*argv, "--json", "--quiet"])
    out, err = capsys.readouterr()
    return code, (json.loads(out.strip().splitlines()[-1]) if code == 0 else err.strip())


def test_cli_pretrains_from_a_folder_and_lists_encoders(lightbox_env, capsys):
    folder = _images(lightbox_env.parent / "cli-src", n=6)
    code, out = _cli(capsys, "pretrain", "--images", str(folder), "--arch", "unet", "--epochs", "2",
                     "--image-size", "32", "--batch-size", "3", "--model-options", json.dumps(SMALL_UNET))
    assert code == 0, out
    assert Path(out["weights"]) == library.encoder_path(out["encoder_id"])
    assert len(out["history"]) == 2 and out["images"] == 6 and out["skipped"] == 2
    assert out["pretrained"] == f"encoder:{out['encoder_id']}"
    code, listed = _cli(capsys, "encoders")
    assert code == 0 and [e["id"] for e in listed["encoders"]] == [out["encoder_id"]]
    code, err = _cli(capsys, "pretrain", "--images", str(folder), "--mode", "inpaint")
    assert code != 0 and err.startswith("error:") and "\n" not in err


def test_a_student_cannot_pretrain_on_another_students_images(unlabeled, capsys):
    for name, role in (("alice", "student"), ("bob", "student")):
        users.add_user(name, role, f"password of {name}")
    folder = _images(Path(unlabeled_dir(unlabeled)).parents[2] / "alice-src", n=3)
    code, out = _cli(capsys, "pretrain", "--images", str(folder), "--epochs", "1", "--image-size", "32",
                     "--batch-size", "3", "--model-options", json.dumps(SMALL_UNET), "--as", "alice")
    assert code == 0, out
    assert library.load_encoder(out["encoder_id"])["owner"] == "alice"
    code, err = _cli(capsys, "pretrain", "--unlabeled", out["unlabeled_id"], "--as", "bob")
    assert code != 0 and "belongs to another student" in err
    code, listed = _cli(capsys, "encoders", "--as", "bob")
    assert code == 0 and listed["encoders"] == []
