"""Export: the TorchScript file reproduces the checkpoint in a fresh process; the card tells the truth."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from io import BytesIO

import pytest
import torch

from engine.config import RunConfig
from engine.runs import execute
from engine.runs.submit import create_run

S = 32

# Runs in a separate interpreter without Lightbox on the path: the export must stand on its own.
RELOAD = ("import sys, torch; torch.set_grad_enabled(False); model = torch.jit.load(sys.argv[1]); "
          "torch.save(model(torch.load(sys.argv[2])), sys.argv[3])")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny U-Net and a tiny LeNet-5 run, trained once for the module."""
    from engine.data.demo import write_demo
    from engine.data.ingest import ingest
    home = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIGHTBOX_HOME", str(home / "ws"))
        if not os.environ.get("LIGHTBOX_DB_URL", "").startswith("postgresql"):
            mp.delenv("LIGHTBOX_DB_URL", raising=False)
        found = {}
        cases = (("segmentation", "unet", {"depth": 2, "base": 8}), ("classification", "lenet5", {}))
        for task, arch, options in cases:
            src = write_demo(task, home / task, n=16, size=S, seed=1)
            config = RunConfig(dataset_id=ingest(src, task=task).dataset_id, arch=arch, epochs=1, batch_size=8,
                               image_size=S, model_options=options, preview_samples=0)
            run_id = create_run(config, status="running")
            assert execute.run_job(run_id)["status"] == "done"
            found[task] = run_id
        yield found


@pytest.mark.parametrize("task", ["segmentation", "classification"])
def test_torchscript_reloads_in_a_fresh_process_with_the_same_outputs(runs, task, tmp_path):
    from engine.inference.export import export_run
    from engine.inference.predict import checkpoint_path, model_from_checkpoint
    run_id = runs[task]
    paths = export_run(run_id, tmp_path / "export")
    x = torch.rand(3, 1, S, S, generator=torch.Generator().manual_seed(7))   # batch 3: not the traced batch size
    torch.save(x, tmp_path / "x.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", RELOAD, str(paths["model"]), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                   check=True, cwd=tmp_path, env=env, timeout=120)
    reloaded = torch.load(tmp_path / "y.pt")
    model, _, _ = model_from_checkpoint(torch.load(checkpoint_path(run_id), weights_only=True))
    with torch.no_grad():
        expected = model(x)
    assert reloaded.shape == expected.shape
    assert float((reloaded - expected).abs().max()) <= 1e-5


def test_preprocessing_json_describes_the_input(runs, tmp_path):
    from engine.inference.export import export_run
    paths = export_run(runs["segmentation"], tmp_path)
    info = json.loads(paths["preprocessing"].read_text())
    assert info["input"]["shape"] == ["N", 1, S, S] and info["input"]["range"] == [0.0, 1.0]
    assert info["resize"]["method"] == "bilinear" and info["resize"]["antialias"] is True
    assert info["normalisation"]["inside_model"] is True and len(info["normalisation"]["mean"]) == 1
    assert info["classes"] == ["background", "foreground"] and "window" in info["intensity"]


def test_model_card_states_it_is_not_a_medical_device_and_gives_the_metrics(runs, tmp_path):
    from engine.inference.export import NOT_A_DEVICE, export_run
    from engine.runs import store
    run_id = runs["classification"]
    card = export_run(run_id, tmp_path)["model_card"].read_text()
    run = store.get_run(run_id)
    assert NOT_A_DEVICE in card and "must not be used for diagnosis" in card
    assert f"| accuracy | {run['best']['accuracy']:.4f} |" in card            # validation, best epoch
    assert f"| accuracy | {run['test']['accuracy']:.4f} |" in card            # held-out test split
    assert "LeNet-5" in card and "Parameters:" in card and "Images per split: train" in card
    assert "Education and research" in card and "## Limitations" in card


def test_export_zip_and_cli(runs, tmp_path, capsys):
    from engine.cli.main import main
    from engine.inference.export import export_zip
    run_id = runs["segmentation"]
    names = zipfile.ZipFile(BytesIO(export_zip(run_id))).namelist()
    assert sorted(names) == sorted(f"lightbox-{run_id}/{n}" for n in
                                   ("model.torchscript.pt", "preprocessing.json", "model_card.md"))
    assert main(["export", "--run", run_id, str(tmp_path / "cli"), "--json"]) == 0
    files = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["files"]
    assert set(files) == {"model", "preprocessing", "model_card"}
    assert all(os.path.exists(p) for p in files.values())
    assert main(["export", "--run", "missing-run", str(tmp_path / "x"), "--json"]) == 2
