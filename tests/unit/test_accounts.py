"""Classroom accounts (issue 14): argon2 hashes only, the user commands, and an old workspace that still opens."""
from __future__ import annotations

import json
import sqlite3

import pytest
from sqlalchemy import select

from engine.accounts import users
from engine.accounts.actor import Actor
from engine.cli.main import main
from engine.errors import UserError
from engine.runs import store

PASSWORD = "correct-horse-7731"


def _cli(capsys, *args: str, stdin: str | None = None, monkeypatch=None) -> tuple[int, dict | None, str]:
    """Run the CLI in this process; (exit code, the last JSON line or None, stderr)."""
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", __import__("io").StringIO(stdin))
    code = main([*args, "--json"])
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    return code, json.loads(lines[-1]) if code == 0 and lines else None, err


@pytest.mark.postgres
def test_password_is_stored_only_as_an_argon2_hash(lightbox_env):
    assert users.accounts_enabled() is False
    users.add_user("ada", "student", PASSWORD)
    assert users.accounts_enabled() is True
    with store.db().connect() as conn:
        rows = conn.execute(select(users.users)).all()
    assert [(r.name, r.role) for r in rows] == [("ada", "student")]
    assert rows[0].password_hash.startswith("$argon2id$") and PASSWORD not in rows[0].password_hash
    assert all(PASSWORD not in str(v) for v in rows[0])
    assert users.list_users() == [{"name": "ada", "role": "student", "created_at": rows[0].created_at}]
    if not store.db().url.drivername.startswith("sqlite"):
        return
    found = [p for p in lightbox_env.rglob("*") if p.is_file() and PASSWORD.encode() in p.read_bytes()]
    assert found == []


@pytest.mark.postgres
def test_verify_get_actor_and_remove(lightbox_env):
    users.add_user("prof.x", "instructor", PASSWORD)
    actor = users.verify("prof.x", PASSWORD)
    assert actor == Actor("prof.x", "instructor") and actor.is_instructor
    assert users.verify("prof.x", "wrong") is None and users.verify("nobody", PASSWORD) is None
    assert users.get_actor("prof.x") == actor
    with pytest.raises(UserError, match="There is no user 'nobody'"):
        users.get_actor("nobody")
    with pytest.raises(UserError, match="already a user"):
        users.add_user("prof.x", "student", "other")
    users.remove_user("prof.x")
    assert users.list_users() == [] and users.accounts_enabled() is False
    with pytest.raises(UserError, match="no user"):
        users.remove_user("prof.x")


@pytest.mark.parametrize("name,role,password,fragment", [
    ("../etc", "student", "pw", "not a valid user name"),
    ("a" * 81, "student", "pw", "not a valid user name"),
    ("", "student", "pw", "not a valid user name"),
    ("ok", "admin", "pw", "not a role"),
    ("ok", "student", "", "empty"),
])
def test_bad_names_roles_and_passwords_are_refused(lightbox_env, name, role, password, fragment):
    with pytest.raises(UserError, match=fragment):
        users.add_user(name, role, password)
    assert users.list_users() == []


def test_user_commands(lightbox_env, tmp_path, capsys, monkeypatch):
    secret = tmp_path / "pw.txt"
    secret.write_text(PASSWORD + "\n")
    code, out, err = _cli(capsys, "user", "add", "ada", "--role", "student", "--password-file", str(secret))
    assert code == 0, err
    assert out == {"name": "ada", "role": "student", "created_at": out["created_at"]}
    code, out, err = _cli(capsys, "user", "add", "prof", "--role", "instructor", stdin="s3cret-stdin\n",
                          monkeypatch=monkeypatch)
    assert code == 0, err
    assert users.verify("prof", "s3cret-stdin") == Actor("prof", "instructor")
    assert users.verify("ada", PASSWORD) == Actor("ada", "student")          # the file's newline is not part of it
    csv_file = tmp_path / "class.csv"
    csv_file.write_text("name,role,password\nbo,student,pw-bo\ncy,Student,pw-cy\n")
    code, out, err = _cli(capsys, "user", "import", str(csv_file))
    assert code == 0 and out == {"added": ["bo", "cy"]}, err
    code, out, _ = _cli(capsys, "user", "list")
    assert [(u["name"], u["role"]) for u in out["users"]] == [("ada", "student"), ("bo", "student"),
                                                               ("cy", "student"), ("prof", "instructor")]
    assert "hash" not in json.dumps(out) and "argon2" not in json.dumps(out)
    code, out, err = _cli(capsys, "user", "remove", "bo")
    assert code == 0 and out == {"removed": "bo"}, err
    # refusals: one line on stderr, non-zero exit
    for args, fragment in ((("user", "remove", "bo"), "There is no user 'bo'"),
                           (("user", "add", "ada", "--role", "student", "--password-file", str(secret)),
                            "already a user"),
                           (("user", "add", "dee", "--role", "boss", "--password-file", str(secret)), "not a role"),
                           (("user", "add", "dee", "--role", "student", "--password-file", str(tmp_path / "no")),
                            "could not be read"),
                           (("user", "list", "--as", "cy"), "Only an instructor"),
                           (("runs", "--as", "ghost"), "There is no user 'ghost'")):
        code, _, err = _cli(capsys, *args)
        assert code != 0 and fragment in err and len(err.strip().splitlines()) == 1, (args, err)
    assert PASSWORD not in capsys.readouterr().out


def test_import_is_all_or_nothing_and_names_the_bad_line(lightbox_env, tmp_path):
    bad = tmp_path / "class.csv"
    bad.write_text("name,role,password\nok1,student,pw\nbad name,student,pw\n")
    with pytest.raises(UserError, match="class.csv line 3"):
        users.import_users(bad)
    twice = tmp_path / "twice.csv"
    twice.write_text("name,role,password\nok1,student,pw\nok1,student,pw\n")
    with pytest.raises(UserError, match="twice.csv line 3: 'ok1' appears twice"):
        users.import_users(twice)
    no_column = tmp_path / "cols.csv"
    no_column.write_text("name,password\nok1,pw\n")
    with pytest.raises(UserError, match="no role column"):
        users.import_users(no_column)
    assert users.list_users() == []


def test_an_old_workspace_gains_the_owner_column(tmp_path, monkeypatch):
    """A store made before classroom mode (lb_runs without owner) opens, reads and writes runs."""
    home = tmp_path / "ws"
    home.mkdir()
    monkeypatch.setenv("LIGHTBOX_HOME", str(home))
    monkeypatch.delenv("LIGHTBOX_DB_URL", raising=False)
    old_columns = [c for c in store.runs.columns if c.name != "owner"]
    con = sqlite3.connect(home / "lightbox.db")
    con.execute(f"CREATE TABLE lb_runs ({', '.join(f'{c.name} TEXT' for c in old_columns)})")
    con.execute("INSERT INTO lb_runs (id, dataset_id, arch, task, config, status, created_at) "
                "VALUES ('0101-000000-abcd', 'd', 'lenet5', 'classification', '{}', 'done', 1.0)")
    con.commit()
    con.close()
    assert store.workspace.db_url().endswith(str(home / "lightbox.db"))
    assert store.get_run("0101-000000-abcd")["owner"] is None
    run_id = store.insert_run({"dataset_id": "d", "arch": "lenet5", "task": "classification"}, owner="ada")
    assert [r["id"] for r in store.list_runs(owner="ada")] == [run_id]
    assert len(store.list_runs()) == 2


@pytest.mark.postgres
def test_the_migration_adds_owner_to_an_existing_runs_table(lightbox_env):
    """Same on PostgreSQL: a runs table without owner (an old database) gains it; running it again is harmless."""
    eng = store.db()
    with eng.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE lb_runs DROP COLUMN owner")
        conn.exec_driver_sql("INSERT INTO lb_runs (id, dataset_id, arch, task, config, status, created_at) "
                             "VALUES ('0101-000000-abcd', 'd', 'lenet5', 'classification', '{}', 'done', 1.0)")
    store.add_missing_columns(eng)
    store.add_missing_columns(eng)
    assert store.get_run("0101-000000-abcd")["owner"] is None
    run_id = store.insert_run({"dataset_id": "d", "arch": "lenet5", "task": "classification"}, owner="ada")
    assert [r["id"] for r in store.list_runs(owner="ada")] == [run_id]


@pytest.mark.postgres
def test_wrong_passwords_lock_that_name_for_a_while_and_a_reset_lifts_it(lightbox_env):
    """Five wrong passwords in ten minutes: that name waits (refused before the hash is checked, the right
    password included); other names are untouched; the lock ends with the window or an instructor's reset."""
    users.add_user("ada", "student", PASSWORD)
    users.add_user("bo", "student", PASSWORD)
    t0 = 1_000_000.0
    for i in range(users.LOGIN_TRIES):
        assert users.verify("ada", f"guess-{i}", now=t0 + i) is None
    with pytest.raises(UserError, match=r"Too many wrong passwords for 'ada'; wait 10 minutes"):
        users.verify("ada", PASSWORD, now=t0 + 10)
    assert users.verify("bo", PASSWORD, now=t0 + 10) == Actor("bo", "student")
    assert users.verify("ada", PASSWORD, now=t0 + users.LOGIN_WINDOW_S + 1) == Actor("ada", "student")
    for i in range(users.LOGIN_TRIES):                      # a success cleared the count; lock it again
        users.verify("ada", "nope", now=t0 + 2000 + i)
    with pytest.raises(UserError, match="Too many"):
        users.verify("ada", PASSWORD, now=t0 + 2010)
    users.set_password("ada", "a-new-one-42")
    assert users.verify("ada", "a-new-one-42", now=t0 + 2011) == Actor("ada", "student")
    with pytest.raises(UserError, match="no user 'ghost'"):
        users.set_password("ghost", "x")


def test_user_password_command_resets_a_password(lightbox_env, tmp_path, capsys, monkeypatch):
    users.add_user("ada", "student", PASSWORD)
    code, out, err = _cli(capsys, "user", "password", "ada", stdin="fresh-pw-9\n", monkeypatch=monkeypatch)
    assert code == 0 and out == {"name": "ada", "password": "changed"}, err
    assert users.verify("ada", "fresh-pw-9") == Actor("ada", "student") and users.verify("ada", PASSWORD) is None
    code, _, err = _cli(capsys, "user", "password", "ada", "--as", "ada", stdin="x\n", monkeypatch=monkeypatch)
    assert code != 0 and "Only an instructor" in err
