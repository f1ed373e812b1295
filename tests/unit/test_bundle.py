"""Reproducible hand-ins: a run as one ZIP (settings, seed, data fingerprint, versions, history, diagnosis, model)
and `reproduce`, which re-runs it with the same seed and reports the difference in the headline metric."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import zipfile

import pytest

from engine.accounts.actor import Actor
from engine.classroom import assignments, bundle
from engine.config import RunConfig
from engine.data.manifest import load_manifest
from engine.errors import UserError
from engine.runs import execute, store
from engine.runs.submit import create_run

TEACHER = Actor("teach", "instructor")
ALICE = Actor("alice", "student")
BOB = Actor("bob", "student")
TOLERANCE = 1e-6          # same seed, same CPU, same libraries: measured difference 0.0


def _trained(dataset_id: str, owner: str | None = None) -> dict:
    config = RunConfig(dataset_id=dataset_id, arch="lenet5", epochs=2, batch_size=8, image_size=32, seed=7,
                       preview_samples=0)
    run_id = create_run(config, status="running")
    store.update_run(run_id, owner=owner)
    run = execute.run_job(run_id)
    assert run["status"] == "done", run["message"]
    return run


def _members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_bundle_holds_everything_and_reproduces_within_tolerance(tmp_path, tiny_classification):
    run = _trained(tiny_classification)
    made = bundle.make_bundle(None, run["id"], tmp_path / "hand-in.zip")
    files = _members(tmp_path / "hand-in.zip")
    assert sorted(files) == made["files"] == sorted(
        ["README.txt", "bundle.json", "config.json", "diagnosis.json", "metrics.csv", "model/model.torchscript.pt",
         "model/preprocessing.json", "model/model_card.md"])
    info = json.loads(files["bundle.json"])
    assert info["seed"] == 7 and json.loads(files["config.json"]) == run["config"]
    assert info["dataset"]["fingerprint"] == bundle.dataset_fingerprint(load_manifest(tiny_classification))
    assert len(info["dataset"]["fingerprint"]) == 64 and info["versions"]["torch"]
    assert info["headline"] == {"metric": "accuracy", "value": run["best_value"], "split": "val",
                                "epoch": run["best_epoch"]}
    assert info["test"]["accuracy"] == run["test"]["accuracy"]
    history = list(csv.DictReader(io.StringIO(files["metrics.csv"].decode())))
    assert {(r["epoch"], r["name"]) for r in history if r["split"] == "val"} >= {("1", "accuracy"), ("2", "accuracy")}
    assert isinstance(json.loads(files["diagnosis.json"]), list)
    assert b"Held-out test metrics" in files["model/model_card.md"]

    again = bundle.reproduce(tmp_path / "hand-in.zip")
    assert again["status"] == "done" and again["run_id"] != run["id"] and again["metric"] == "accuracy"
    assert again["original"]["accuracy"] == run["best_value"]
    assert abs(again["difference"]) <= TOLERANCE, again
    assert again["reproduced"]["test_accuracy"] == pytest.approx(run["test"]["accuracy"], abs=TOLERANCE)


def test_reproduce_names_a_missing_dataset_and_a_bad_file_in_one_line(tmp_path, tiny_classification, monkeypatch):
    run = _trained(tiny_classification)
    bundle.make_bundle(None, run["id"], tmp_path / "b.zip")
    with pytest.raises(UserError, match="^nope.zip is not a file; give the bundle's .zip.$"):
        bundle.reproduce(tmp_path / "nope.zip")
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(UserError) as err:
        bundle.reproduce(tmp_path / "junk.zip")
    assert str(err.value) == "junk.zip is not a readable ZIP file; download the bundle again."
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("hello.txt", "hi")
    with pytest.raises(UserError, match="other.zip is not a Lightbox bundle"):
        bundle.reproduce(tmp_path / "other.zip")
    assignments.create_assignment(TEACHER, tiny_classification, "Week 1", max_epochs=1)
    with pytest.raises(UserError, match="allows Epochs up to 1, not 2"):       # a student's re-run obeys the limits
        bundle.reproduce(tmp_path / "b.zip", ALICE)
    monkeypatch.setenv("LIGHTBOX_HOME", str(tmp_path / "elsewhere"))        # a workspace without those images
    with pytest.raises(UserError) as err:
        bundle.reproduce(tmp_path / "b.zip")
    name = json.loads(_members(tmp_path / "b.zip")["bundle.json"])["dataset"]["name"]
    assert str(err.value).startswith(f"No dataset in this workspace holds the images of '{name}'")
    assert "\n" not in str(err.value)


def test_a_students_bundle_carries_no_hidden_test_values(tmp_path, tiny_classification):
    run = _trained(tiny_classification, owner="alice")
    assignments.create_assignment(TEACHER, tiny_classification, "Week 1", hide_test=True)
    with pytest.raises(UserError, match="belongs to another"):
        bundle.make_bundle(BOB, run["id"], tmp_path / "bob.zip")
    bundle.make_bundle(ALICE, run["id"], tmp_path / "alice.zip")
    files = _members(tmp_path / "alice.zip")
    assert json.loads(files["bundle.json"])["test"] is None
    card = files["model/model_card.md"].decode()
    assert "Held-out test metrics" in card and "Hidden until the instructor releases" in card
    assert f"{run['test']['accuracy']:.4f}" not in card.split("## Held-out test")[1].split("## ")[0]
    bundle.make_bundle(TEACHER, run["id"], tmp_path / "teacher.zip")
    assert json.loads(_members(tmp_path / "teacher.zip")["bundle.json"])["test"]["accuracy"] == run["test"]["accuracy"]


def _cli(home, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LIGHTBOX_HOME": str(home)}
    env.pop("LIGHTBOX_DB_URL", None)
    return subprocess.run([sys.executable, "-m", "engine", *args, "--json", "--quiet"], capture_output=True,
                          text=True, env=env, timeout=300)


@pytest.mark.skipif(bool(os.environ.get("LIGHTBOX_DB_URL")), reason="the CLI subprocesses use the SQLite workspace")
def test_cli_bundle_then_reproduce(lightbox_env, tmp_path, tiny_classification):
    run = _trained(tiny_classification)
    made = _cli(lightbox_env, "bundle", "--run", run["id"], str(tmp_path / "b.zip"))
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout.splitlines()[-1])["path"] == str(tmp_path / "b.zip")
    again = _cli(lightbox_env, "reproduce", str(tmp_path / "b.zip"))
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout.splitlines()[-1])
    assert result["status"] == "done" and result["original"]["accuracy"] == run["best_value"]
    assert abs(result["difference"]) <= TOLERANCE
