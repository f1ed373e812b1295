"""Issue 13 items 4 and 5: run ids and search names from users are data, never path fragments.

A run id is checked against the generated id's alphabet and looked up in the store before any file is touched;
a search's log and pid files are named by an id derived from its name, so no name can place them elsewhere.
Refusals are one short line (a 100 KB id is cut in the message)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import UserError
from engine.runs import store

from refusals import lightbox_checkpoint, main_refusal, one_error_line

LONG_ID = "a" * 100_000


def png(path: Path) -> Path:
    from PIL import Image
    Image.new("L", (32, 32), 128).save(path)
    return path


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LIGHTBOX_HOME": str(home)}
    env.pop("LIGHTBOX_DB_URL", None)
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, env=env,
                          timeout=300)


# ---- item 4: run ids are looked up, never joined into a path ----------------------------------------------

def test_predict_and_export_refuse_a_run_id_that_walks_out_of_the_workspace(tmp_path):
    """The issue's reproduction: a real checkpoint two folders above runs/ is never loaded."""
    home = tmp_path / "ws"
    (home / "runs").mkdir(parents=True)
    lightbox_checkpoint(tmp_path / "outside" / "best.pt")       # runs/../../outside == tmp_path/outside
    image = png(tmp_path / "x.png")
    predicted = _cli("predict", "--run", "../../outside", str(image), "--json", home=home)
    assert predicted.returncode != 0, predicted.stdout
    line = one_error_line(predicted.stderr)
    assert "There is no run '../../outside'" in line and "engine runs" in line
    exported = _cli("export", "--run", "../../outside", str(tmp_path / "out"), "--json", home=home)
    assert exported.returncode != 0
    assert "There is no run '../../outside'" in one_error_line(exported.stderr)
    assert not (tmp_path / "out").exists()


def test_every_run_path_checks_the_id_first(lightbox_env):
    from engine.runs import paths
    for bad in ("../../outside", "/etc", "a/b", "..", ".hidden", "", "x" * 41, "ok\nsecond line", "tab\tid"):
        with pytest.raises(UserError, match="There is no run"):
            paths.run_dir(bad)
        with pytest.raises(UserError, match="There is no run"):
            paths.checkpoint_path(bad)
        assert paths.has_best_checkpoint(bad) is False
    run_id = store.insert_run({"dataset_id": "d", "arch": "lenet5", "task": "classification"}, status="done")
    assert paths.run_dir(run_id) == lightbox_env / "runs" / run_id
    # a well-formed id that the store does not know is refused too, before its folder is looked at
    lightbox_checkpoint(lightbox_env / "runs" / "0101-000000-abcd" / "best.pt")
    with pytest.raises(UserError, match="There is no run '0101-000000-abcd'"):
        paths.checkpoint_path("0101-000000-abcd")


def test_queue_commands_refuse_path_like_ids_in_one_line(lightbox_env, capsys):
    outside = lightbox_env.parent / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not Lightbox's")
    for command in ("cancel", "resume", "delete", "run-job"):
        code, line = main_refusal(capsys, command, "../../outside", "--json")
        assert code == 2 and "There is no run '../../outside'" in line, line
    assert (outside / "keep.txt").exists()


# ---- partial: a 100 KB run id gives one short line ---------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ("predict", "--run", LONG_ID, "IMAGE"),
    ("export", "--run", LONG_ID, "OUT"),
    ("cancel", LONG_ID), ("resume", LONG_ID), ("delete", LONG_ID), ("run-job", LONG_ID),
])
def test_a_100_kb_run_id_is_one_short_line(lightbox_env, tmp_path, capsys, argv):
    image = png(tmp_path / "x.png")
    argv = [str(image) if a == "IMAGE" else str(tmp_path / "out") if a == "OUT" else a for a in argv]
    code, line = main_refusal(capsys, *argv)
    assert code == 2, line
    assert "There is no run 'aaaaaaaaaa" in line and "…" in line and len(line) < 300, line[:400]
    assert "File name too long" not in line and "OSError" not in line


def test_the_cli_never_prints_more_than_one_line(lightbox_env, capsys, monkeypatch):
    """Even an unexpected error with a multi-line, huge message prints one bounded line."""
    from engine.cli import queue as queue_cli

    def boom(args):
        raise RuntimeError("first line\nsecond line\n" + "x" * 50_000)
    monkeypatch.setattr(queue_cli, "cmd_runs", boom)
    code, line = main_refusal(capsys, "runs")
    assert code == 3 and "first line second line" in line and len(line) < 1000


# ---- item 5: a search's name never becomes a file name ------------------------------------------------------

class _FakePopen:
    """Stands in for the background search process (the test checks where its files go, not the search)."""
    pid = 999_999_999

    def __init__(self, *args, stdout=None, **kwargs) -> None:
        self.args = args


def _spec(dataset_id: str, name: str):
    from engine.search import study as search
    return search.StudySpec(dataset_id=dataset_id, base={"arch": "lenet5", "epochs": 1, "image_size": 32},
                            n_trials=1, name=name)


def test_a_search_name_with_a_path_writes_its_log_and_pid_in_the_workspace_logs(tiny_classification,
                                                                                 lightbox_env, monkeypatch):
    from engine.search import study as search
    name = "../escape_study"
    assert search.create_study(_spec(tiny_classification, name)) == name     # names are data: kept as given
    monkeypatch.setattr(search.subprocess, "Popen", _FakePopen)
    assert search.launch_search(name) == _FakePopen.pid
    logs = lightbox_env / "logs"
    escaped = [p for p in lightbox_env.parent.rglob("escape_study*")]
    assert escaped == [], escaped
    written = sorted(p.name for p in logs.iterdir())
    assert len(written) == 2 and all(n.startswith("search-") for n in written), written
    assert {Path(n).suffix for n in written} == {".log", ".pid"}
    found = search.background_process(name)
    assert found is not None and found["alive"] is False
    # another name gets other files; the same name always the same ones
    assert search.process_files(name) == search.process_files(name)
    assert search.process_files(name) != search.process_files("escape_study")


@pytest.mark.parametrize("name", ["../../../x/escape_study", "/etc/passwd", "..", "a\\b", "ü " * 20, "x" * 100])
def test_any_name_maps_to_a_plain_file_in_logs(lightbox_env, name):
    from engine.search import study as search
    log, pid = search.process_files(name)
    for path in (log, pid):
        assert path.parent == lightbox_env / "logs"
        assert path.name.isascii() and "/" not in path.name and not path.name.startswith(".")
        assert len(path.name) < 100


def test_search_names_are_bounded_and_refused_in_one_line(tiny_classification, lightbox_env, capsys):
    from engine.search import study as search
    with pytest.raises(UserError, match="at most"):
        search.create_study(_spec(tiny_classification, "n" * 101))
    with pytest.raises(UserError, match="line"):
        search.create_study(_spec(tiny_classification, "two\nlines"))
    code, line = main_refusal(capsys, "search", "--study", "s" * 100_000, "--stop", "--json")
    assert code == 2 and "There is no search called 'ssss" in line and len(line) < 300, line[:400]


def test_a_dataset_id_that_walks_out_of_the_workspace_is_refused(lightbox_env, tmp_path):
    """A dataset id is data too: '../../x' used to read x/manifest.json from outside the workspace."""
    from engine.data.manifest import dataset_dir, load_manifest, manifest_or_none
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "manifest.json").write_text('{"id": "outside", "task": "classification"}')
    escape = os.path.relpath(outside, lightbox_env / "datasets")
    for bad in (escape, "../outside", "/etc", "a/b", "", LONG_ID):
        with pytest.raises(UserError) as err:
            load_manifest(bad)
        assert "does not exist" in str(err.value) and len(str(err.value)) < 120
        with pytest.raises(UserError):
            dataset_dir(bad)
        assert manifest_or_none(bad) is None


@pytest.mark.parametrize("argv", [("train", "--dataset", LONG_ID, "--arch", "lenet5"),
                                  ("delete-dataset", "../../outside")])
def test_a_bad_dataset_id_on_the_command_line_is_one_short_line(lightbox_env, capsys, argv):
    code, err = main_refusal(capsys, *argv)
    assert code != 0 and ("does not exist" in err or "There is no dataset" in err), err
    assert "unexpected" not in err and len(err) < 200, err
