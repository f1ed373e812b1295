"""The CLI contract: --json prints one JSON object last; bad input exits non-zero with one line, no traceback."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def _cli(*args: str, home) -> subprocess.CompletedProcess:
    env = {**os.environ, "LIGHTBOX_HOME": str(home)}
    env.pop("LIGHTBOX_DB_URL", None)
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def _last_json(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_demo_ingest_train_runs_predict_flow(tmp_path):
    home = tmp_path / "ws"
    out = _cli("demo-data", "classification", str(tmp_path / "demo.zip"), "--n", "24", "--size", "32", "--json",
               home=home)
    assert out.returncode == 0, out.stderr
    assert _last_json(out)["path"].endswith("demo.zip")
    ingested = _cli("ingest", str(tmp_path / "demo.zip"), "--task", "classification", "--json", "--quiet", home=home)
    assert ingested.returncode == 0, ingested.stderr
    dataset_id = _last_json(ingested)["dataset_id"]
    (listed_data,) = _last_json(_cli("datasets", "--json", home=home))["datasets"]
    assert listed_data["id"] == dataset_id and listed_data["task"] == "classification"
    assert listed_data["samples"] == 24 and listed_data["classes"] == ["abdomen", "chest"]
    trained = _cli("train", "--dataset", dataset_id, "--arch", "lenet5", "--epochs", "1", "--image-size", "32",
                   "--json", "--quiet", home=home)
    assert trained.returncode == 0, trained.stderr
    result = _last_json(trained)
    assert result["status"] == "done" and "accuracy" in result["best"]
    listed = _last_json(_cli("runs", "--json", home=home))
    assert [r["run_id"] for r in listed["runs"]] == [result["run_id"]]
    queued = _cli("submit", "--dataset", dataset_id, "--arch", "lenet5", "--epochs", "1", "--image-size", "32",
                  "--json", home=home)
    run_id = _last_json(queued)["run_id"]
    assert _last_json(_cli("cancel", run_id, "--json", home=home)) == {"run_id": run_id, "status": "cancelled"}
    run_dir = home / "runs" / result["run_id"]
    assert (run_dir / "best.pt").exists()
    assert _last_json(_cli("delete", result["run_id"], "--json", home=home)) == {"run_id": result["run_id"],
                                                                                 "status": "deleted"}
    assert not run_dir.exists()
    assert [r["run_id"] for r in _last_json(_cli("runs", "--json", home=home))["runs"]] == [run_id]


@pytest.mark.parametrize("args,fragment", [
    (["ingest", "/nonexistent/folder", "--task", "classification"], "does not exist"),
    (["train", "--dataset", "nope", "--arch", "unet"], "does not exist"),
    (["cancel", "no-such-run"], "no run"),
    (["delete", "no-such-run"], "no run"),
    (["delete-dataset", "no-such-dataset"], "does not exist"),
])
def test_bad_input_is_one_readable_line(tmp_path, args, fragment):
    proc = _cli(*args, "--json", home=tmp_path / "ws")
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0]
    assert "Traceback" not in proc.stderr


def test_progress_into_a_pipe_is_a_few_plain_lines(tmp_path):
    """In a script (stderr not a terminal) ingest and train print a handful of lines, not carriage-return redraws."""
    home = tmp_path / "ws"
    _cli("demo-data", "classification", str(tmp_path / "demo.zip"), "--n", "60", "--size", "32", home=home)
    ingested = _cli("ingest", str(tmp_path / "demo.zip"), "--task", "classification", "--json", home=home)
    assert ingested.returncode == 0, ingested.stderr
    assert "\r" not in ingested.stderr
    lines = ingested.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 4 and lines[-1] == "Ingesting: 60/60 files", ingested.stderr
    trained = _cli("train", "--dataset", _last_json(ingested)["dataset_id"], "--arch", "lenet5", "--epochs", "3",
                   "--batch-size", "4", "--image-size", "32", "--json", home=home)
    assert trained.returncode == 0, trained.stderr
    assert "\r" not in trained.stderr
    lines = [line for line in trained.stderr.splitlines() if line.startswith("Training:")]
    assert 1 <= len(lines) <= 5 and lines[-1].startswith("Training: finished (epoch 3, accuracy"), trained.stderr


@pytest.mark.parametrize("argv", [["runs", "--json"], ["user", "list", "--json"]])
def test_queue_commands_answer_without_loading_torch(tmp_path, argv):
    """The queue and account listings answer in a fraction of a second: they never import torch."""
    code = (f"import sys; from engine.cli.main import main\ntry: main({argv!r})\nexcept SystemExit: pass\n"
            "print('torch' in sys.modules, file=sys.stderr)")
    env = {**os.environ, "LIGHTBOX_HOME": str(tmp_path / "ws")}
    env.pop("LIGHTBOX_DB_URL", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stderr.strip().splitlines()[-1] == "False", proc.stderr


def test_segmentation_mlp_trains_and_reports_a_diagnosis(tmp_path):
    """The seed lab's fully connected baseline segments too; train and runs rows say what went wrong."""
    home = tmp_path / "ws"
    _cli("demo-data", "segmentation", str(tmp_path / "seg.zip"), "--n", "24", "--size", "32", home=home)
    ingested = _cli("ingest", str(tmp_path / "seg.zip"), "--task", "segmentation", "--json", "--quiet", home=home)
    assert ingested.returncode == 0, ingested.stderr
    trained = _cli("train", "--dataset", _last_json(ingested)["dataset_id"], "--arch", "mlp", "--epochs", "2",
                   "--batch-size", "8", "--image-size", "32", "--json", "--quiet", home=home)
    assert trained.returncode == 0, trained.stderr
    result = _last_json(trained)
    assert result["status"] == "done" and 0.0 <= result["best"]["dice"] <= 1.0
    kinds = [finding["kind"] for finding in result["diagnosis"]]
    assert all(finding["message"] for finding in result["diagnosis"])
    assert "small_validation" in kinds           # 24 images leave a handful for validation
    (row,) = _last_json(_cli("runs", "--json", home=home))["runs"]
    assert row["run_id"] == result["run_id"] and row["diagnosis"] == result["diagnosis"]


def test_a_job_of_several_runs_fails_naming_how_many_did_not_finish():
    from engine.cli.common import CommandFailed, all_done
    rows = [{"run_id": "a", "status": "done"}, {"run_id": "b", "status": "failed"}, {"run_id": "c", "status": "cancelled"}]
    result = {"points": rows}
    assert all_done(rows[:1], "folds", result) is result
    with pytest.raises(CommandFailed, match=r"^2 of 3 runs of the learning curve did not finish \(first: run b failed\)$"):
        all_done(rows, "runs of the learning curve", result)
