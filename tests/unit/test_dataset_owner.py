"""Classroom mode: a dataset ingested as a student is theirs (issue 14). Other students neither list nor delete it;
an instructor's datasets are shared with the class; without accounts nothing changes."""
from __future__ import annotations

import json

from engine.accounts import users
from engine.cli.main import main
from engine.data.demo import write_demo
from engine.data.manifest import load_manifest


def _run(capsys, *argv: str) -> tuple[int, dict | str]:
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out.strip().splitlines()[-1]) if code == 0 else err.strip())


def _ingest(capsys, src, who: str | None) -> str:
    code, out = _run(capsys, "ingest", str(src), "--task", "classification", "--quiet", *(["--as", who] if who else []))
    assert code == 0, out
    return out["dataset_id"]


def test_a_students_dataset_is_theirs_and_an_instructors_is_shared(lightbox_env, capsys):
    for name, role in (("teach", "instructor"), ("alice", "student"), ("bob", "student")):
        users.add_user(name, role, f"password of {name}")
    src = write_demo("classification", lightbox_env.parent / "src", n=12, size=32, seed=1)
    mine = _ingest(capsys, src, "alice")
    shared = _ingest(capsys, src, "teach")
    legacy = _ingest(capsys, src, None)
    assert (load_manifest(mine)["owner"], load_manifest(shared)["owner"], load_manifest(legacy)["owner"]) == \
        ("alice", "teach", None)

    def listed(who: str | None) -> set[str]:
        code, out = _run(capsys, "datasets", *(["--as", who] if who else []))
        assert code == 0, out
        return {d["id"] for d in out["datasets"]}

    assert listed("alice") == {mine, shared, legacy}
    assert listed("bob") == {shared, legacy}                    # not alice's
    assert listed("teach") == listed(None) == {mine, shared, legacy}
    code, err = _run(capsys, "delete-dataset", mine, "--as", "bob")
    assert code != 0 and len(err.splitlines()) == 1 and "alice" not in err, err
    assert load_manifest(mine)["owner"] == "alice"              # still there
    code, out = _run(capsys, "delete-dataset", mine, "--as", "alice")
    assert code == 0 and out["status"] == "deleted", out


def test_listing_many_datasets_asks_for_the_instructors_once(lightbox_env, monkeypatch):
    from engine.accounts import access
    from engine.accounts.actor import Actor
    users.add_user("teach", "instructor", "pw-teach")
    manifests = [{"id": f"d{i}", "owner": ("teach", "someone", None, "alice")[i % 4]} for i in range(40)]
    calls = []
    real = users.instructors
    monkeypatch.setattr(users, "instructors", lambda: calls.append(1) or real())
    seen = access.visible_datasets(Actor("alice", "student"), manifests)
    assert [m["id"] for m in seen] == [m["id"] for m in manifests if m["owner"] != "someone"] and len(calls) == 1
    assert access.visible_datasets(Actor("teach", "instructor"), manifests) == manifests and len(calls) == 1
