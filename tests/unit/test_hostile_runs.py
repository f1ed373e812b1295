"""Issue 13, partial items: an evil checkpoint, a run folder that stops taking writes mid-run, a worker killed
with -9. Each ends in one sentence that names the file or folder and says what to do."""
from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from sqlalchemy import select

from engine.config import RunConfig
from engine.errors import UserError
from engine.runs import execute, queue, store, submit, worker
from engine.runs.paths import run_dir
from engine.runs.store import jobs, workers
from engine.training.events import Event

from refusals import lightbox_checkpoint, main_refusal

ENGINE = Path(__file__).resolve().parents[2] / "engine"


class Evil:
    """Unpickling this would run a command; weights_only=True must refuse it before that."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_file(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": Evil(marker), "config": {}, "dataset": {}}, path)
    return path


def _config(dataset_id: str, **changes) -> RunConfig:
    base = dict(dataset_id=dataset_id, arch="lenet5", epochs=2, batch_size=8, image_size=32, preview_samples=0)
    return RunConfig(**{**base, **changes})


# ---- an evil best.pt / last.pt ------------------------------------------------------------------------------

def test_predict_and_export_refuse_an_evil_checkpoint_in_one_line(lightbox_env, tmp_path, capsys):
    from PIL import Image
    run_id = store.insert_run({"dataset_id": "d", "arch": "lenet5", "task": "classification"}, status="done")
    marker = tmp_path / "pwned"
    _evil_file(run_dir(run_id) / "best.pt", marker)
    Image.new("L", (32, 32)).save(tmp_path / "x.png")
    for argv in (("predict", "--run", run_id, str(tmp_path / "x.png")), ("export", "--run", run_id,
                                                                         str(tmp_path / "out"))):
        code, line = main_refusal(capsys, *argv, "--json")
        assert code == 2, line
        assert f"best.pt of run {run_id} is not a Lightbox checkpoint" in line, line
        assert "weights_only" not in line and "Weights only load failed" not in line
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"hello world" * 10, b"PK\x03\x04" + b"\0" * 40, "truncated"])
def test_a_damaged_checkpoint_is_one_sentence(lightbox_env, tmp_path, content):
    from engine.inference.predict import load_predictor
    run_id = store.insert_run({"dataset_id": "d", "arch": "lenet5", "task": "classification"}, status="done")
    path = run_dir(run_id) / "best.pt"
    path.parent.mkdir(parents=True)
    if content == "truncated":
        content = lightbox_checkpoint(tmp_path / "whole.pt").read_bytes()[:3000]
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        load_predictor(run_id)
    message = str(err.value)
    assert message.startswith(f"best.pt of run {run_id} is not a Lightbox checkpoint") and "\n" not in message


def test_a_checkpoint_without_lightbox_contents_is_refused(lightbox_env):
    from engine.inference.predict import load_predictor
    run_id = store.insert_run({"dataset_id": "d", "arch": "lenet5", "task": "classification"}, status="done")
    run_dir(run_id).mkdir(parents=True)
    torch.save({"model": {"w": torch.zeros(2)}}, run_dir(run_id) / "best.pt")     # a plain dict of tensors
    with pytest.raises(UserError, match=f"best.pt of run {run_id} is not a Lightbox checkpoint"):
        load_predictor(run_id)
    torch.save({"model": {"w": torch.zeros(2)}, "config": {"arch": "lenet5", "task": "classification"},
                "dataset": {"channels": 1, "num_classes": 2, "classes": ["a", "b"], "task": "classification"}},
               run_dir(run_id) / "best.pt")                                       # weights of another network
    with pytest.raises(UserError, match="not a Lightbox checkpoint"):
        load_predictor(run_id)


def test_resume_from_an_evil_last_pt_fails_the_run_with_one_sentence(tiny_classification, tmp_path):
    from engine.runs.submit import create_run
    run_id = create_run(_config(tiny_classification), status="running")
    marker = tmp_path / "pwned"
    _evil_file(run_dir(run_id) / "last.pt", marker)
    run = execute.run_job(run_id, resume=True)
    assert run["status"] == "failed"
    assert run["message"].startswith(f"last.pt of run {run_id} is not a Lightbox checkpoint"), run["message"]
    assert "\n" not in run["message"] and "weights_only" not in run["message"]
    assert not marker.exists()


def test_user_weight_files_are_refused_in_one_line(tmp_path):
    from engine.models.builder import build_model
    marker = tmp_path / "pwned"
    path = _evil_file(tmp_path / "mine.pt", marker)
    with pytest.raises(UserError) as err:
        build_model("resnet18", 1, 2, pretrained=str(path))
    message = str(err.value)
    assert message.startswith(f"Could not read weights from {path}") and "\n" not in message
    assert "Python objects" in message and "weights_only" not in message
    assert not marker.exists()


def test_torch_load_has_one_home():
    """Every checkpoint or weight file is read through engine.models.checkpoints (weights_only, one sentence)."""
    callers = [str(p.relative_to(ENGINE)) for p in ENGINE.rglob("*.py")
               if "torch.load(" in p.read_text() and p.name != "checkpoints.py"]
    assert callers == []


# ---- a run folder that stops taking writes -------------------------------------------------------------------

class _AfterFirstEpoch:
    """Runs `action(folder)` when epoch 1 has been checkpointed, so epoch 2's save is the one that fails."""

    def __init__(self, action) -> None:
        self.action = action

    def attach(self, events) -> None:
        events.on(Event.EPOCH_END, self.on_epoch)

    def on_epoch(self, trainer, epoch: int, **_) -> None:
        if epoch == 1:
            self.action(trainer.run_dir)


def _train_two_epochs(dataset_id: str, action) -> dict:
    from engine.runs.submit import create_run
    run_id = create_run(_config(dataset_id), status="running")
    return execute.run_job(run_id, handlers=[_AfterFirstEpoch(action)])


@pytest.mark.parametrize("error,cause", [
    (RuntimeError("[enforce fail at inline_container.cc:747] . open file failed with strerror: Permission denied"),
     "the folder is read-only (permission denied)"),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"), "the disk is full"),
    (OSError(errno.EACCES, "Permission denied"), "the folder is read-only (permission denied)"),
    (OSError(errno.ENOSPC, "No space left on device"), "the disk is full"),
    (OSError(errno.EROFS, "Read-only file system"), "the disk is read-only"),
])
def test_a_failed_checkpoint_write_names_the_folder_and_the_cause(tiny_classification, monkeypatch, error, cause):
    """What torch.save raises when the folder turns read-only or the disk fills (seen on this stack), simulated."""
    real_save = torch.save

    def breaks(folder):
        def save(obj, f, *args, **kwargs):
            if Path(f).parent == folder:
                raise error
            return real_save(obj, f, *args, **kwargs)
        monkeypatch.setattr(torch, "save", save)
    run = _train_two_epochs(tiny_classification, breaks)
    folder = run_dir(run["id"])
    assert run["status"] == "failed"
    message = run["message"]
    assert message.startswith(f"Could not save the checkpoint in {folder}: {cause}"), message
    assert message.endswith("then resume the run.") and "\n" not in message and "enforce" not in message
    assert (folder / "last.pt").exists() and not list(folder.glob(".*.tmp"))


def _lock(folder: Path) -> None:
    """Make the folder refuse new files: chmod for a normal user; as root (which ignores modes) the immutable
    attribute, when this file system and container allow it."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
    elif subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root without chattr +i: a read-only folder cannot be made here")


def _unlock(folder: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    folder.chmod(0o755)


def test_a_run_folder_made_read_only_mid_run_ends_the_run_with_a_sentence(tiny_classification):
    locked = []

    def lock(folder):
        locked.append(folder)
        _lock(folder)
    try:
        run = _train_two_epochs(tiny_classification, lock)
    finally:
        for folder in locked:
            _unlock(folder)
    folder = run_dir(run["id"])
    assert run["status"] == "failed"
    assert run["message"].startswith(f"Could not save the checkpoint in {folder}: the folder is read-only"), \
        run["message"]
    assert "Unexpected error" not in run["message"] and "\n" not in run["message"]


def test_a_run_folder_replaced_by_a_file_mid_run_ends_the_run_with_a_sentence(tiny_classification):
    """Works as root too: a file where the run folder was refuses every write."""
    def replace(folder):
        shutil.move(folder, folder.with_name(folder.name + ".moved"))
        folder.write_text("not a folder")
    run = _train_two_epochs(tiny_classification, replace)
    folder = run_dir(run["id"])
    assert run["status"] == "failed"
    assert run["message"].startswith(f"Could not save the checkpoint in {folder}: the folder is missing"), \
        run["message"]
    assert "\n" not in run["message"]


# ---- kill -9 of a worker --------------------------------------------------------------------------------------

def _rows(table, column, value) -> list[dict]:
    with store.db().connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(table).where(column == value))]


def test_a_stale_run_takes_its_claimed_job_and_dead_worker_with_it(lightbox_env, monkeypatch):
    """Simulated: a worker that claimed a run and then went silent (as after kill -9)."""
    monkeypatch.setenv("LIGHTBOX_STALE_SECONDS", "5")
    run_id = store.insert_run({"dataset_id": "d", "arch": "lenet5", "task": "classification"})
    queue.enqueue(run_id, resume=False)
    worker._register_worker("host:111", slots=1, device="cpu")
    worker._register_worker("host:222", slots=1, device="cpu")                  # a live worker: left alone
    assert queue.claim_next_job("host:111").run_id == run_id
    store.set_status(run_id, "running")
    long_ago = store.now() - 60
    store.update_run(run_id, heartbeat_at=long_ago)
    with store.db().begin() as conn:
        conn.execute(workers.update().where(workers.c.id == "host:111").values(heartbeat_at=long_ago))
    assert queue.mark_stale_runs() == [run_id]
    assert store.get_run(run_id)["status"] == "interrupted"
    assert [j["status"] for j in _rows(jobs, jobs.c.run_id, run_id)] == ["finished"]
    assert _rows(workers, workers.c.id, "host:111")[0]["stopped"] is True
    assert _rows(workers, workers.c.id, "host:222")[0]["stopped"] is False


@pytest.mark.slow
def test_kill_9_of_a_worker_leaves_no_claimed_job_or_live_worker_row(tiny_classification, monkeypatch):
    """The real thing: a worker process killed with -9 while its run starts; the sweep cleans every row."""
    run_id = submit.submit(_config(tiny_classification, epochs=200))
    env = {**os.environ, "LIGHTBOX_STALE_SECONDS": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "engine", "worker", "--poll", "0.2"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while store.get_run(run_id)["status"] not in store.STARTED and time.monotonic() < deadline:
            time.sleep(0.2)
        assert store.get_run(run_id)["status"] in store.STARTED
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    monkeypatch.setenv("LIGHTBOX_STALE_SECONDS", "3")
    deadline = time.monotonic() + 60
    while store.get_run(run_id)["status"] != "interrupted" and time.monotonic() < deadline:
        queue.mark_stale_runs()
        time.sleep(0.5)
    assert store.get_run(run_id)["status"] == "interrupted"
    assert [j["status"] for j in _rows(jobs, jobs.c.run_id, run_id)] == ["finished"]
    (row,) = _rows(workers, workers.c.pid, proc.pid)
    assert row["stopped"] is True
    assert worker.live_workers() == []


def test_a_worker_that_cannot_write_a_run_folder_fails_that_run_and_carries_on(lightbox_env):
    """A run whose folder cannot be made or written (here a file sits where it should be) fails with the
    sentence; the worker itself keeps going instead of dying with the claimed job."""
    first = store.insert_run({"dataset_id": "d", "arch": "lenet5", "task": "classification"})
    queue.enqueue(first, resume=False)
    (lightbox_env / "runs").mkdir(parents=True, exist_ok=True)
    run_dir(first).write_text("not a folder")
    assert worker.run_worker(slots=1, until_idle=True, poll=0.05) == 0
    run = store.get_run(first)
    assert run["status"] == "failed", run
    assert run["message"].startswith(f"Could not save the run's log in {run_dir(first)}: the folder is missing")
    assert [j["status"] for j in _rows(jobs, jobs.c.run_id, first)] == ["finished"]
