"""Fixtures for engine tests: a private workspace and database per test, and tiny datasets."""
from __future__ import annotations

import os

import pytest

from engine.runs import store

PG_URL = os.environ.get("LIGHTBOX_DB_URL", "")


@pytest.fixture
def lightbox_env(tmp_path, monkeypatch):
    """A fresh workspace; on PostgreSQL (CI) the shared database is emptied instead of replaced."""
    monkeypatch.setenv("LIGHTBOX_HOME", str(tmp_path / "ws"))
    if PG_URL:
        eng = store.engine_for(PG_URL)
        store.metadata.drop_all(eng)
        store.metadata.create_all(eng)
    else:
        monkeypatch.delenv("LIGHTBOX_DB_URL", raising=False)
    return tmp_path / "ws"


@pytest.fixture
def tiny_segmentation(lightbox_env):
    from engine.data.demo import write_demo
    from engine.data.ingest import ingest
    src = write_demo("segmentation", lightbox_env.parent / "seg-src", n=24, size=32, seed=3)
    return ingest(src, task="segmentation").dataset_id


@pytest.fixture
def tiny_classification(lightbox_env):
    from engine.data.demo import write_demo
    from engine.data.ingest import ingest
    src = write_demo("classification", lightbox_env.parent / "cls-src", n=24, size=32, seed=3)
    return ingest(src, task="classification").dataset_id
