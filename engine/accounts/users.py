"""User accounts in the store: a name, a role and an argon2 hash of the password (never the password itself)."""
from __future__ import annotations

import csv
import re
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Column, Float, Integer, String, Table, Text, delete, exists, insert, select, update

from engine.accounts.actor import ROLES, Actor
from engine.errors import UserError, shown
from engine.runs import store

users = Table(
    "lb_users", store.metadata,
    Column("name", String(80), primary_key=True),
    Column("role", String(20), nullable=False),
    Column("password_hash", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

# Failed logins per name: after LOGIN_TRIES wrong passwords within LOGIN_WINDOW_S seconds that name must wait until
# the oldest of them is that old. Kept in the store, so every server process and every tab counts against one limit.
login_failures = Table(
    "lb_login_failures", store.metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(80), nullable=False, index=True),
    Column("at", Float, nullable=False),
)
LOGIN_TRIES = 5
LOGIN_WINDOW_S = 600.0

NAME = re.compile(r"[A-Za-z0-9._-]{1,80}")
MAX_PASSWORD = 1024
# argon2id at OWASP's recommended minimum (19 MiB, 2 passes, 1 lane): ~60 ms a hash on a busy 2-core server,
# so importing a class of 30 takes seconds, not the ~15 s of the library's 64 MiB default. A hash made with
# other settings still verifies, and is redone with these at the next login.
HASHER = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
_DUMMY_HASH = HASHER.hash("not a password")


def _db():
    return store.ensure_tables(users)


def check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise UserError(f"'{shown(name)}' is not a valid user name; use 1–80 letters, digits, '.', '_' or '-'.")
    return name


def check_role(role: object) -> str:
    if role not in ROLES:
        raise UserError(f"'{shown(role)}' is not a role; use {' or '.join(ROLES)}.")
    return str(role)


def check_password(password: object, where: str = "The password") -> str:
    if not isinstance(password, str) or not password:
        raise UserError(f"{where} is empty; give a password.")
    if len(password) > MAX_PASSWORD:
        raise UserError(f"{where} is longer than {MAX_PASSWORD} characters; choose a shorter one.")
    return password


def _public(row) -> dict:
    return {"name": row.name, "role": row.role, "created_at": row.created_at}


def add_user(name: str, role: str, password: str) -> dict:
    """Create a user; the password is kept only as its argon2 hash."""
    row = {"name": check_name(name), "role": check_role(role), "created_at": store.now(),
           "password_hash": HASHER.hash(check_password(password))}
    _insert([row])
    return {k: row[k] for k in ("name", "role", "created_at")}


def _insert(rows: list[dict]) -> None:
    with _db().begin() as conn:
        taken = set(conn.execute(select(users.c.name).where(users.c.name.in_([r["name"] for r in rows]))).scalars())
        if taken:
            raise UserError(f"There is already a user '{shown(sorted(taken)[0])}'; pick another name or remove "
                            "that user first.")
        conn.execute(insert(users), rows)


def set_password(name: str, password: str) -> dict:
    """A new password for an existing user (an instructor's reset); their failed-login count starts again."""
    check_password(password)
    with _db().begin() as conn:
        if conn.execute(update(users).where(users.c.name == name).values(
                password_hash=HASHER.hash(password))).rowcount != 1:
            raise _no_such_user(name)
    with _failures_db().begin() as conn:
        conn.execute(delete(login_failures).where(login_failures.c.name == name))
    return {"name": name, "password": "changed"}


def remove_user(name: str) -> None:
    """Delete the account; the user's runs stay (with their owner's name) for the instructor to see."""
    with _db().begin() as conn:
        if conn.execute(delete(users).where(users.c.name == name)).rowcount != 1:
            raise _no_such_user(name)


def list_users() -> list[dict]:
    """Every user as {"name", "role", "created_at"}, by name; never the hashes."""
    with _db().connect() as conn:
        return [_public(r) for r in conn.execute(select(users.c.name, users.c.role, users.c.created_at)
                                                 .order_by(users.c.name))]


def import_users(csv_path: str | Path) -> list[str]:
    """Add every user of a CSV with columns name,role,password; all or none (a bad line names itself)."""
    path = Path(csv_path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path.name} could not be read as a UTF-8 CSV file; save it as CSV (UTF-8).") from err
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in ("name", "role", "password") if c not in (reader.fieldnames or [])]
    if missing:
        raise UserError(f"{path.name} has no {', '.join(missing)} column; its first line must be name,role,password.")
    rows, seen = [], set()
    for line, record in enumerate(reader, start=2):
        where = f"{path.name} line {line}"
        name, role = (record.get("name") or "").strip(), (record.get("role") or "").strip().lower()
        try:
            check_name(name)
            check_role(role)
            check_password(record.get("password"))
        except UserError as err:
            raise UserError(f"{where}: {err}") from None
        if name in seen:
            raise UserError(f"{where}: '{name}' appears twice; keep one line per user.")
        seen.add(name)
        rows.append({"name": name, "role": role, "password": record["password"]})
    if not rows:
        raise UserError(f"{path.name} lists no users; add one line per user under name,role,password.")
    created = store.now()
    _insert([{"name": r["name"], "role": r["role"], "created_at": created,
              "password_hash": HASHER.hash(r["password"])} for r in rows])
    return [r["name"] for r in rows]


def verify(name: str, password: str, now: float | None = None) -> Actor | None:
    """The user when the password is theirs, else None (an unknown name costs as much time as a wrong password).

    After LOGIN_TRIES failures for one name within LOGIN_WINDOW_S, further tries are refused unchecked (UserError
    saying how long to wait): guessing a classmate's password takes days, not minutes."""
    valid = isinstance(name, str) and NAME.fullmatch(name) is not None
    now = store.now() if now is None else now
    if valid:
        _check_not_locked(name, now)
    row = _get(name) if valid else None
    try:
        HASHER.verify(row.password_hash if row else _DUMMY_HASH, password if isinstance(password, str) else "")
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        if valid:
            _record_failure(name, now)
        return None
    if row is None:
        return None
    with _failures_db().begin() as conn:
        conn.execute(delete(login_failures).where(login_failures.c.name == name))
    if HASHER.check_needs_rehash(row.password_hash):
        with _db().begin() as conn:
            conn.execute(update(users).where(users.c.name == name).values(password_hash=HASHER.hash(password)))
    return Actor(row.name, row.role)


def _failures_db():
    return store.ensure_tables(login_failures)


def _check_not_locked(name: str, now: float) -> None:
    since = now - LOGIN_WINDOW_S
    with _failures_db().connect() as conn:
        recent = sorted(conn.execute(select(login_failures.c.at).where(
            login_failures.c.name == name, login_failures.c.at > since)).scalars())
    if len(recent) >= LOGIN_TRIES:
        wait = recent[-LOGIN_TRIES] + LOGIN_WINDOW_S - now
        minutes = max(1, round(wait / 60 + 0.49))
        raise UserError(f"Too many wrong passwords for '{name}'; wait {minutes} minute{'s' * (minutes != 1)} and "
                        "try again, or ask your instructor to set a new password.")


def _record_failure(name: str, now: float) -> None:
    with _failures_db().begin() as conn:
        conn.execute(delete(login_failures).where(login_failures.c.at <= now - LOGIN_WINDOW_S))
        conn.execute(insert(login_failures).values(name=name, at=now))


def _get(name: str):
    with _db().connect() as conn:
        return conn.execute(select(users).where(users.c.name == name)).first()


def _no_such_user(name: object) -> UserError:
    return UserError(f"There is no user '{shown(name)}'; `python -m engine user list` lists the users.")


def get_actor(name: str) -> Actor:
    row = _get(name) if isinstance(name, str) and NAME.fullmatch(name) else None
    if row is None:
        raise _no_such_user(name)
    return Actor(row.name, row.role)


def instructors() -> set[str]:
    with _db().connect() as conn:
        return set(conn.execute(select(users.c.name).where(users.c.role == "instructor")).scalars())


def accounts_enabled() -> bool:
    """True once at least one user exists: from then on the UI asks who is there."""
    with _db().connect() as conn:
        return bool(conn.execute(select(exists().where(users.c.name.isnot(None)))).scalar())
