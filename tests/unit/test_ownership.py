"""Ownership (issue 14): a student cannot see, stop, resume, delete, predict with or export another student's run —
in the engine and the CLI alike; an instructor can, and so can the operator (no actor, no --as)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile

import pytest

from engine.accounts import access, users
from engine.accounts.access import AccessDenied
from engine.accounts.actor import Actor
from engine.cli.main import main
from engine.errors import UserError
from engine.inference.batch import predict_zip
from engine.inference.export import export_run, export_zip
from engine.inference.predict import load_predictor
from engine.runs import lifecycle, store

ALICE, BOB, PROF = Actor("alice", "student"), Actor("bob", "student"), Actor("prof", "instructor")
CONFIG = {"dataset_id": "d", "arch": "lenet5", "task": "classification", "name": "alice's secret project"}
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def _run(owner: str | None, status: str = "done") -> str:
    run_id = store.insert_run(CONFIG, owner=owner, status="queued")
    if status != "queued":
        store.set_status(run_id, status)
    return run_id


@pytest.mark.postgres
def test_list_runs_filters_by_owner_and_visible_runs_follows_roles(lightbox_env):
    mine, theirs, old = _run("alice"), _run("bob"), _run(None)
    assert [r["id"] for r in store.list_runs(owner="alice")] == [mine]
    everyone = store.list_runs()
    assert {r["id"] for r in everyone} == {mine, theirs, old}
    assert [r["id"] for r in access.visible_runs(ALICE, everyone)] == [mine]
    assert len(access.visible_runs(PROF, everyone)) == len(access.visible_runs(None, everyone)) == 3
    assert access.can_see_run(BOB, store.get_run(theirs)) and not access.can_see_run(BOB, store.get_run(mine))


@pytest.mark.postgres
@pytest.mark.parametrize("action,status,call", [
    ("stop", "queued", lambda run_id, actor: lifecycle.cancel(run_id, actor=actor)),
    ("resume", "cancelled", lambda run_id, actor: lifecycle.resume(run_id, actor=actor)),
    ("delete", "done", lambda run_id, actor: lifecycle.delete(run_id, actor=actor)),
])
def test_a_student_cannot_act_on_another_students_run(lightbox_env, action, status, call):
    run_id = _run("alice", status)
    with pytest.raises(AccessDenied) as refused:
        call(run_id, BOB)
    message = str(refused.value)
    assert message == f"Run {run_id} belongs to another user; you can only {action} your own runs."
    assert "secret" not in message and "alice" not in message
    assert store.get_run(run_id)["status"] == status and not store.get_run(run_id)["cancel_requested"]
    for actor in (ALICE, PROF, None):                       # the owner, an instructor, the operator
        other = _run("alice", status)
        call(other, actor)
        assert store.get_run(other) is None or store.get_run(other)["status"] != status


def test_a_student_cannot_predict_with_or_export_another_students_run(lightbox_env, tmp_path):
    run_id = _run("alice")
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("a.png", b"not really")
    refusals = (lambda a: load_predictor(run_id, actor=a), lambda a: predict_zip(run_id, archive, tmp_path / "o",
                actor=a), lambda a: export_run(run_id, tmp_path / "e", actor=a), lambda a: export_zip(run_id, actor=a))
    for call in refusals:
        with pytest.raises(AccessDenied, match="you can only (predict with|export) your own runs"):
            call(BOB)
        for actor in (ALICE, PROF, None):          # allowed: they get as far as the missing checkpoint
            with pytest.raises(UserError, match="no saved model yet") as err:
                call(actor)
            assert not isinstance(err.value, AccessDenied)
    assert not (tmp_path / "e").exists() and not (tmp_path / "o").exists()


def test_an_unknown_run_stays_unknown_for_a_student(lightbox_env):
    with pytest.raises(UserError, match="There is no run 'nope'") as err:
        lifecycle.cancel("nope", actor=BOB)
    assert not isinstance(err.value, AccessDenied)


# ---- the CLI: --as on every command; a refusal exits non-zero with one line ----------------------------

def _cli(capsys, *args: str) -> tuple[int, dict | None, str]:
    code = main([*args, "--json", "--quiet"])
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    return code, json.loads(lines[-1]) if code == 0 and lines else None, err


def _refused(capsys, *args: str) -> str:
    code, _, err = _cli(capsys, *args)
    assert code != 0 and len(err.strip().splitlines()) == 1, (args, code, err)
    assert "Traceback" not in err
    return err


@pytest.fixture
def classroom(lightbox_env):
    for actor in (ALICE, BOB, PROF):
        users.add_user(actor.name, actor.role, f"pw-{actor.name}")
    return lightbox_env


def test_cli_runs_lists_only_the_students_own_runs_with_iso_times(classroom, tiny_classification, capsys, tmp_path):
    code, trained, err = _cli(capsys, "train", "--dataset", tiny_classification, "--arch", "lenet5", "--epochs", "1",
                              "--image-size", "32", "--as", "alice")
    assert code == 0, err
    mine = trained["run_id"]
    code, queued, err = _cli(capsys, "--as", "bob", "submit", "--dataset", tiny_classification, "--arch", "lenet5",
                             "--epochs", "1", "--image-size", "32")
    assert code == 0, err
    theirs = queued["run_id"]
    old = _run(None)                                     # made before accounts existed: the operator's
    rows = {name: _cli(capsys, "runs", *(["--as", name] if name else []))[1]["runs"]
            for name in ("alice", "bob", "prof", None)}
    assert [r["run_id"] for r in rows["alice"]] == [mine]
    assert [r["run_id"] for r in rows["bob"]] == [theirs]
    assert {r["run_id"] for r in rows["prof"]} == {r["run_id"] for r in rows[None]} == {mine, theirs, old}
    for row in rows[None]:
        assert {"owner", "started_at", "finished_at", "status", "best", "test", "diagnosis"} <= set(row)
    by_id = {r["run_id"]: r for r in rows[None]}
    assert by_id[mine]["owner"] == "alice" and by_id[theirs]["owner"] == "bob" and by_id[old]["owner"] is None
    assert ISO.fullmatch(by_id[mine]["started_at"]) and ISO.fullmatch(by_id[mine]["finished_at"])
    assert by_id[theirs]["started_at"] is None and by_id[theirs]["finished_at"] is None

    # bob can neither stop, resume, delete, predict with nor export alice's run; prof and the operator can
    image = tmp_path / "x.png"
    from PIL import Image
    Image.new("L", (40, 40), 128).save(image)
    for args, verb in ((("cancel", mine), "stop"), (("resume", mine), "resume"), (("delete", mine), "delete"),
                       (("predict", "--run", mine, str(image)), "predict with"),
                       (("export", "--run", mine, str(tmp_path / "out")), "export")):
        err = _refused(capsys, *args, "--as", "bob")
        assert f"you can only {verb} your own runs" in err and "alice" not in err
    assert not (tmp_path / "out").exists()
    code, predicted, err = _cli(capsys, "predict", "--run", mine, str(image), "--as", "prof")
    assert code == 0 and predicted["results"][0]["prediction"] in ("abdomen", "chest"), err
    code, exported, err = _cli(capsys, "export", "--run", mine, str(tmp_path / "out"))
    assert code == 0 and set(exported["files"]) == {"model", "preprocessing", "model_card"}, err
    assert _cli(capsys, "cancel", theirs, "--as", "bob")[1] == {"run_id": theirs, "status": "cancelled"}
    assert _refused(capsys, "delete", theirs, "--as", "alice")
    assert _cli(capsys, "delete", theirs, "--as", "prof")[1] == {"run_id": theirs, "status": "deleted"}


def test_as_before_the_command_and_an_unknown_user_in_a_real_process(classroom, tmp_path):
    env = {**os.environ, "LIGHTBOX_HOME": str(classroom)}
    env.pop("LIGHTBOX_DB_URL", None)
    ok = subprocess.run([sys.executable, "-m", "engine", "--as", "alice", "runs", "--json"], capture_output=True,
                        text=True, env=env, timeout=120)
    assert ok.returncode == 0 and json.loads(ok.stdout.strip().splitlines()[-1]) == {"runs": []}, ok.stderr
    bad = subprocess.run([sys.executable, "-m", "engine", "cancel", "0101-000000-abcd", "--as", "mallory"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode != 0 and bad.stderr.strip() == ("error: There is no user 'mallory'; "
                                                           "`python -m engine user list` lists the users.")


def test_runs_show_no_hidden_test_values_to_a_student_until_release(classroom, tiny_classification, capsys):
    from engine.classroom.assignments import create_assignment, release
    run_id = store.insert_run({**CONFIG, "dataset_id": tiny_classification}, owner="alice", status="queued")
    store.set_status(run_id, "done")
    store.update_run(run_id, test={"accuracy": 0.9, "loss": 0.3}, best={"accuracy": 0.8, "test_accuracy": 0.9})
    create_assignment(PROF, tiny_classification, "hw1", hide_test=True)
    (row,) = _cli(capsys, "runs", "--as", "alice")[1]["runs"]
    assert "test" not in row and "test_accuracy" not in row["best"] and row["best"]["accuracy"] == 0.8
    assert "0.9" not in json.dumps(row)
    for who in ("prof", None):
        (row,) = _cli(capsys, "runs", *(["--as", who] if who else []))[1]["runs"]
        assert row["test"] == {"accuracy": 0.9, "loss": 0.3}
    release(PROF, "hw1")
    (row,) = _cli(capsys, "runs", "--as", "alice")[1]["runs"]
    assert row["test"] == {"accuracy": 0.9, "loss": 0.3}


def test_a_student_submit_is_held_to_the_assignment_and_to_shared_datasets(classroom, tiny_classification, capsys):
    from engine.classroom.assignments import create_assignment
    from engine.data.manifest import dataset_dir
    create_assignment(PROF, tiny_classification, "hw1", max_epochs=1)
    submit = ("submit", "--dataset", tiny_classification, "--arch", "lenet5", "--image-size", "32", "--epochs")
    err = _refused(capsys, *submit, "3", "--as", "alice")
    assert "allows Epochs up to 1" in err
    assert _cli(capsys, *submit, "1", "--as", "alice")[0] == 0
    assert _cli(capsys, *submit, "3", "--as", "prof")[0] == 0
    path = dataset_dir(tiny_classification) / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "owner": "bob"}))          # bob's own upload: not shared
    err = _refused(capsys, *submit, "1", "--as", "alice")
    assert "belongs to another student" in err
    assert _cli(capsys, *submit, "1", "--as", "bob")[0] == 0
    path.write_text(json.dumps({**manifest, "owner": "prof"}))         # an instructor's dataset: shared
    assert _cli(capsys, *submit, "1", "--as", "alice")[0] == 0
    owners = [r["owner"] for r in store.list_runs()]
    assert sorted(owners) == ["alice", "alice", "bob", "prof"]


def test_datasets_a_student_sees_and_deletes(classroom, tiny_classification):
    from engine.data.manifest import dataset_dir, load_manifest
    manifest = load_manifest(tiny_classification)
    seen = {owner: access.can_see_dataset(BOB, {**manifest, "owner": owner}) for owner in ("bob", "alice", "prof", None)}
    assert seen == {"bob": True, "alice": False, "prof": True, None: True}
    assert access.can_see_dataset(PROF, {**manifest, "owner": "alice"})
    path = dataset_dir(tiny_classification) / "manifest.json"
    path.write_text(json.dumps({**manifest, "owner": "alice"}))
    with pytest.raises(AccessDenied, match="you can only delete your own datasets"):
        lifecycle.delete_dataset(tiny_classification, actor=BOB)
    assert lifecycle.delete_dataset(tiny_classification, actor=ALICE) == "deleted"
    assert not dataset_dir(tiny_classification).exists()
