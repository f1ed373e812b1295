"""Shared pytest fixtures."""
from pathlib import Path

import pytest


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """LIGHTBOX_HOME pointed at this test's tmp_path, so datasets and runs land there."""
    monkeypatch.setenv("LIGHTBOX_HOME", str(tmp_path))
    return tmp_path
