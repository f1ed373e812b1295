"""Workspace settings: the per-workspace secret behind patient pseudonyms."""
from __future__ import annotations

import multiprocessing as mp
import stat

from engine import workspace


def _key(home: str, out) -> None:
    import os
    os.environ["LIGHTBOX_HOME"] = home
    from engine import workspace as s
    out.put(s.secret_key())


def test_secret_key_is_made_once_private_and_shared_by_processes(lightbox_env):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_key, args=(str(lightbox_env), out)) for _ in range(4)]
    for p in procs:
        p.start()
    keys = {out.get(timeout=60) for _ in procs}
    for p in procs:
        p.join(30)
    assert len(keys) == 1 and workspace.secret_key() in keys and len(workspace.secret_key()) == 32
    assert stat.S_IMODE((lightbox_env / ".key").stat().st_mode) == 0o600


def test_a_damaged_key_is_a_readable_error_and_no_temporary_files_stay(lightbox_env):
    import pytest

    from engine.errors import UserError
    workspace.secret_key()
    assert [p.name for p in lightbox_env.glob(".key*")] == [".key"]
    (lightbox_env / ".key").write_bytes(b"")
    with pytest.raises(UserError, match="damaged"):
        workspace.secret_key()
