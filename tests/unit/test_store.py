"""Run store: CRUD, status transitions, and a reader and a writer in two processes at once."""
from __future__ import annotations

import multiprocessing as mp
import time

import pytest

from engine.runs import store

pytestmark = pytest.mark.postgres

CONFIG = {"dataset_id": "d1", "arch": "unet", "task": "segmentation", "epochs": 3, "name": "x"}


def test_create_and_read_run(lightbox_env):
    run_id = store.insert_run(CONFIG, params=123)
    run = store.get_run(run_id)
    assert run["status"] == "queued" and run["params"] == 123 and run["config"]["arch"] == "unet"
    assert [r["id"] for r in store.list_runs()] == [run_id]
    assert store.get_run("missing") is None
    assert run["started_at"] is None
    assert store.get_run(store.insert_run(CONFIG, status="running"))["started_at"] is not None


def test_run_ids_made_in_the_same_second_do_not_collide():
    """A class or a search queues dozens of runs within one second; 2000 ids at once must all differ (with the old
    16 random bits about 30 pairs collided; with 32 bits a collision here has odds of about 1 in 2000)."""
    ids = [store.new_run_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids) and all(store.is_run_id(i) for i in ids)


def test_status_guard_only_moves_from_allowed_states(lightbox_env):
    run_id = store.insert_run(CONFIG)
    assert store.set_status(run_id, "running", only_if=("queued",))
    assert not store.set_status(run_id, "running", only_if=("queued",))
    assert store.set_status(run_id, "done", "finished")
    run = store.get_run(run_id)
    assert run["status"] == "done" and run["finished_at"] >= run["started_at"]


def test_metrics_roundtrip_and_truncate(lightbox_env):
    run_id = store.insert_run(CONFIG)
    store.log_metrics(run_id, [(1, 1, "train", "loss", 0.5), (1, 1, "val", "dice", 0.7),
                               (2, 2, "train", "loss", float("nan")), (3, 3, "val", "dice", 0.8)])
    rows = store.get_metrics(run_id)
    assert [(r["epoch"], r["name"]) for r in rows] == [(1, "loss"), (1, "dice"), (2, "loss"), (3, "dice")]
    assert rows[2]["value"] is None     # NaN is stored as NULL, never as a broken float
    store.delete_metrics_after(run_id, 1)
    assert {r["epoch"] for r in store.get_metrics(run_id)} == {1}
    assert store.get_metrics(run_id, after_id=rows[0]["id"])[0]["name"] == "dice"


def test_best_json_roundtrip(lightbox_env):
    run_id = store.insert_run(CONFIG)
    store.update_run(run_id, best={"dice": 0.9, "confusion": [[1, 0], [0, 1]]})
    assert store.get_run(run_id)["best"] == {"dice": 0.9, "confusion": [[1, 0], [0, 1]]}


def _writer(home: str, url: str, run_id: str, batches: int, per_batch: int) -> None:
    import os
    os.environ["LIGHTBOX_HOME"] = home
    if url:
        os.environ["LIGHTBOX_DB_URL"] = url
    from engine.runs import store as s
    for b in range(batches):
        s.log_metrics(run_id, [(b, b * per_batch + i, "train", "loss", float(i)) for i in range(per_batch)])
        s.update_run(run_id, heartbeat_at=s.now(), epoch=b)


def test_reader_and_writer_in_two_processes(lightbox_env):
    """The UI polls while a trainer writes: neither side may fail or lose rows."""
    import os
    run_id = store.insert_run(CONFIG)
    batches, per_batch = 150, 20
    ctx = mp.get_context("spawn")
    writer = ctx.Process(target=_writer, args=(os.environ["LIGHTBOX_HOME"], os.environ.get("LIGHTBOX_DB_URL", ""),
                                               run_id, batches, per_batch))
    writer.start()
    reads, last_seen = 0, 0
    while writer.is_alive():
        rows = store.get_metrics(run_id)
        assert len(rows) >= last_seen      # a reader never sees rows disappear
        last_seen = len(rows)
        store.get_run(run_id)
        reads += 1
        time.sleep(0.01)
    writer.join()
    assert writer.exitcode == 0
    assert reads > 3
    assert len(store.get_metrics(run_id)) == batches * per_batch


def test_table_creation_survives_a_process_creating_them_at_the_same_moment(tmp_path, monkeypatch):
    """Two processes starting together both see the tables missing; the slower one must not fail."""
    from sqlalchemy import create_engine, inspect

    eng = create_engine(f"sqlite:///{tmp_path / 'race.db'}")
    original = store.metadata.create_all
    calls = []

    def racing_create_all(bind, **kw):
        calls.append(1)
        if len(calls) == 1:
            original(bind)                        # the other process wins the race ...
            original(bind, checkfirst=False)      # ... and ours then hits "table already exists"
        return original(bind, **kw)

    monkeypatch.setattr(store.metadata, "create_all", racing_create_all)
    store._create_tables(eng)
    assert len(calls) == 2
    assert {"lb_runs", "lb_metrics", "lb_jobs", "lb_workers"} <= set(inspect(eng).get_table_names())


def _open_store(home: str, url: str, barrier) -> None:
    import os
    os.environ["LIGHTBOX_HOME"] = home
    if url:
        os.environ["LIGHTBOX_DB_URL"] = url
    from engine.runs import store as s
    barrier.wait()
    s.list_runs()


def test_many_processes_open_a_new_store_at_once(lightbox_env, monkeypatch):
    import os
    home = str(lightbox_env.parent / "fresh-ws")        # nothing created yet
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(6)
    procs = [ctx.Process(target=_open_store, args=(home, os.environ.get("LIGHTBOX_DB_URL", ""), barrier))
             for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 6
