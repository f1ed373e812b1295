"""Starting from one of your own runs (--init-from RUN_ID, pretrained="run:RUN_ID"): matching tensors load, the
head is rebuilt for another class count, the stem adapts to another channel count, the run says what it kept,
and a student may only start from their own runs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.accounts.access import AccessDenied
from engine.accounts.actor import Actor
from engine.config import RunConfig
from engine.errors import UserError
from engine.models.builder import build_model
from engine.models.weights import adapt_stem_weight, first_conv_name
from engine.runs import execute, store
from engine.runs.paths import run_dir
from engine.runs.submit import create_run

TINY = {"epochs": 1, "batch_size": 4, "image_size": 32, "device": "cpu", "preview_samples": 0,
        "model_options": {"depth": 2, "base": 8}}


def _train(dataset_id: str, owner: str | None = None, **settings) -> dict:
    config = RunConfig(dataset_id=dataset_id, arch=settings.pop("arch", "unet"), **{**TINY, **settings})
    run_id = create_run(config, status="starting", owner=owner)
    run = execute.run_job(run_id)
    assert run["status"] == "done", run["message"]
    return run


def _source_net(run_id: str) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir(run_id) / "best.pt", weights_only=True)["model"]
    return {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}


@pytest.fixture
def three_class_segmentation(lightbox_env) -> str:
    """The demo's masks with the structure cut in two labels (1 left, 2 right): background + 2 classes."""
    from engine.data.demo import write_demo
    from engine.data.ingest import ingest
    src = write_demo("segmentation", lightbox_env.parent / "seg3-src", n=24, size=32, seed=4)
    for path in sorted(Path(src, "masks").glob("*.png")):
        mask = np.asarray(Image.open(path)) > 0
        labels = mask.astype(np.uint8)
        labels[:, 16:][mask[:, 16:]] = 2
        Image.fromarray(labels).save(path)
    return ingest(src, task="segmentation").dataset_id


def test_a_two_class_run_starts_a_three_class_run_body_kept_head_rebuilt(tiny_segmentation,
                                                                          three_class_segmentation):
    source = _train(tiny_segmentation)
    net = build_model("unet", 1, 3, task="segmentation", pretrained=f"run:{source['id']}",
                      options=TINY["model_options"])
    before, after = _source_net(source["id"]), net.state_dict()
    rebuilt = {k for k in after if before[k].shape != after[k].shape}
    assert rebuilt and all(after[k].shape[0] == 3 for k in rebuilt)               # the output layer, 3 classes
    assert all(torch.equal(after[k], before[k]) for k in after if k not in rebuilt)   # the body, as trained
    report = net.weights_report
    assert report.message == (f"Kept {len(after) - len(rebuilt)} of {len(before)} tensors from run {source['id']} "
                              "(U-Net, 2 classes); rebuilt the output layer for 3 classes.")

    run = _train(three_class_segmentation, pretrained=f"run:{source['id']}")      # the whole path, queued run
    from engine.runs.start_from import start_note
    assert start_note(run["id"]) == report.message
    assert start_note(source["id"]) is None                                       # trained from scratch
    from engine.cli.common import run_summary
    assert run_summary(store.get_run(run["id"]))["weights"] == report.message     # `runs` and `train` JSON say it
    assert "weights" not in run_summary(store.get_run(source["id"]))
    new = torch.load(run_dir(run["id"]) / "best.pt", weights_only=True)["model"]
    old = torch.load(run_dir(source["id"]) / "best.pt", weights_only=True)["model"]
    assert torch.equal(new["normalize.mean"], old["normalize.mean"])              # inputs seen as the source saw them


def test_a_grey_run_starts_a_three_channel_model_through_an_adapted_stem(tiny_segmentation):
    source = _train(tiny_segmentation)
    net = build_model("unet", 3, 2, task="segmentation", pretrained=f"run:{source['id']}",
                      options=TINY["model_options"])
    stem = first_conv_name(net) + ".weight"
    before = _source_net(source["id"])
    assert torch.allclose(net.state_dict()[stem], adapt_stem_weight(before[stem], 3))
    assert net.state_dict()[stem].shape[1] == 3
    assert net.weights_report.message == (f"Kept {len(before)} of {len(before)} tensors from run {source['id']} "
                                          "(U-Net, 2 classes, 1 channel); adapted the first layer from 1 to 3 "
                                          "channels.")


def test_another_architecture_or_an_unfinished_run_is_refused_in_one_sentence(tiny_segmentation):
    from engine.preflight import check_config
    source = _train(tiny_segmentation)
    other = RunConfig(dataset_id=tiny_segmentation, arch="fcn_simple", pretrained=f"run:{source['id']}", **{
        k: v for k, v in TINY.items() if k != "model_options"})
    with pytest.raises(UserError, match=r"trained a U-Net, and this run is a .*: starting from a run needs the "
                                        r"same architecture; choose U-Net"):
        check_config(other)
    queued = create_run(RunConfig(dataset_id=tiny_segmentation, arch="unet", **TINY))
    with pytest.raises(UserError, match=f"Run {queued} is queued, not finished"):
        check_config(RunConfig(dataset_id=tiny_segmentation, arch="unet", pretrained=f"run:{queued}", **TINY))
    with pytest.raises(UserError, match="There is no run 'nope' to start from"):
        check_config(RunConfig(dataset_id=tiny_segmentation, arch="unet", pretrained="run:nope", **TINY))


def test_a_student_cannot_start_from_another_students_run(tiny_segmentation, capsys):
    from engine.accounts import users
    from engine.cli.main import main
    from engine.runs.start_from import candidates, check_start
    for name in ("alice", "bob"):
        users.add_user(name, "student", "a long enough password")
    alice, bob = Actor("alice", "student"), Actor("bob", "student")
    source = _train(tiny_segmentation, owner="alice")
    assert check_start(alice, f"run:{source['id']}")["id"] == source["id"]
    assert [r["id"] for r in candidates(alice, "segmentation", "unet")] == [source["id"]]
    assert candidates(bob, "segmentation", "unet") == []
    with pytest.raises(AccessDenied, match="you can only start from your own runs"):
        check_start(bob, f"run:{source['id']}")
    from engine.runs import learning_curve
    with pytest.raises(AccessDenied, match="you can only start from your own runs"):
        config = RunConfig(dataset_id=tiny_segmentation, arch="unet", pretrained=f"run:{source['id']}", **TINY)
        learning_curve.create_curve(config, actor=bob)
    from engine.runs.submit import submit
    with pytest.raises(AccessDenied, match="you can only start from your own runs"):    # the engine's own check
        submit(RunConfig(dataset_id=tiny_segmentation, arch="unet", pretrained=f"run:{source['id']}", **TINY),
               actor=bob)
    before = len(store.list_runs())
    code = main(["--as", "bob", "submit", "--dataset", tiny_segmentation, "--arch", "unet", "--init-from",
                 source["id"], "--image-size", "32", "--epochs", "1"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and err.count("\n") == 0 and "you can only start from your own runs" in err
    assert len(store.list_runs()) == before                                       # nothing queued
    assert main(["--as", "alice", "submit", "--dataset", tiny_segmentation, "--arch", "unet", "--init-from",
                 source["id"], "--image-size", "32", "--epochs", "1", "--json"]) == 0
    assert store.list_runs()[0]["config"]["pretrained"] == f"run:{source['id']}"


def test_a_pretrained_encoder_value_loads_its_weights_file(lightbox_env):
    import json

    from engine.pretrain import library
    trained = build_model("unet", 1, 2, task="segmentation", options=TINY["model_options"])
    folder = library.encoders_root() / "enc-1"
    folder.mkdir(parents=True)
    torch.save(trained.state_dict(), folder / library.WEIGHTS_FILE)
    (folder / library.INFO_FILE).write_text(json.dumps({"id": "enc-1", "arch": "unet", "owner": "alice"}))
    net = build_model("unet", 1, 2, task="segmentation", pretrained="encoder:enc-1", options=TINY["model_options"])
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in net.state_dict().items())
