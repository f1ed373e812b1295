"""Fixtures for the AppTest page tests: a private workspace per test, tiny datasets, and fake runs in the store."""
from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:         # pages import `pages._widgets` and `engine` from the repository root
    sys.path.insert(0, str(ROOT))

from engine.config import RunConfig  # noqa: E402
from engine.runs import store  # noqa: E402

TIMEOUT = 60


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh LIGHTBOX_HOME and SQLite store; no background worker is ever started."""
    monkeypatch.setenv("LIGHTBOX_HOME", str(tmp_path / "ws"))
    monkeypatch.setenv("LIGHTBOX_NO_AUTOWORKER", "1")
    monkeypatch.delenv("LIGHTBOX_DB_URL", raising=False)
    return tmp_path / "ws"


def app(page: str | None = None) -> AppTest:
    """The whole app (with navigation and sidebar), optionally switched to one page, after a first run."""
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=TIMEOUT).run()
    if page:
        at.switch_page(page).run()
    return at


def page(name: str) -> AppTest:
    """One page script on its own (no navigation), not yet run."""
    return AppTest.from_file(str(ROOT / "pages" / name), default_timeout=TIMEOUT)


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def rendered(source: str) -> str:
    """How Markdown source reads once rendered, as far as escapes go: a backslash-escaped punctuation character
    shows as itself and a word joiner is invisible (pages escape user text with pages._widgets.as_text)."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", source).replace("\u2060", "")


def sources(at: AppTest, kind: str) -> str:
    """The Markdown source of every element of one kind (markdown, error, info, …), joined."""
    return "\n".join(str(e.value) for e in getattr(at, kind))


def texts(at: AppTest, kind: str) -> str:
    """Everything shown by one kind of element, as it reads (escapes resolved), joined, for `in` checks."""
    return rendered(sources(at, kind))


def plotly_charts(at: AppTest) -> list:
    return at.get("plotly_chart")


@pytest.fixture
def lb(home) -> SimpleNamespace:
    """The helpers above, as one fixture (test modules never import conftest: several conftest.py files exist)."""
    return SimpleNamespace(app=app, page=page, no_exception=no_exception, texts=texts, sources=sources,
                           rendered=rendered, charts=plotly_charts, fake_run=fake_run, home=home)


@pytest.fixture(scope="session")
def _dataset_sources(tmp_path_factory) -> dict[str, Path]:
    """Each tiny demo dataset is generated and ingested once per session, then copied into each test's home."""
    from engine.data.demo import write_demo
    from engine.data.ingest import ingest
    built: dict[str, Path] = {}
    base = tmp_path_factory.mktemp("datasets")
    mp = pytest.MonkeyPatch()
    mp.setenv("LIGHTBOX_HOME", str(base))
    try:
        for kind in ("segmentation", "classification"):
            src = write_demo(kind, base / f"src-{kind}", n=16, size=32, seed=1)
            built[kind] = base / "datasets" / ingest(src, kind, name=f"tiny {kind}").dataset_id
    finally:
        mp.undo()
    return built


def _install(source: Path, home: Path) -> str:
    shutil.copytree(source, home / "datasets" / source.name)
    return source.name


@pytest.fixture
def seg_dataset(home, _dataset_sources) -> str:
    return _install(_dataset_sources["segmentation"], home)


@pytest.fixture
def cls_dataset(home, _dataset_sources) -> str:
    return _install(_dataset_sources["classification"], home)


def fake_run(dataset_id: str, task: str, *, arch: str | None = None, status: str = "done", epochs: int = 3,
             name: str = "", lr: float = 1e-3, value: float = 0.8, steps_per_epoch: int = 4, **extra) -> str:
    """A run row with curves and results, as a finished (or running) trainer would have left them."""
    arch = arch or ("unet" if task == "segmentation" else "resnet18")
    config = RunConfig(dataset_id=dataset_id, arch=arch, task=task, name=name, epochs=epochs, lr=lr,
                       image_size=32, augment=["hflip"])
    run_id = store.insert_run(config.to_dict(), status=status, params=123_456)
    names = ("dice", "iou") if task == "segmentation" else ("accuracy", "balanced_accuracy", "auc")
    done_epochs = epochs if status == "done" else max(1, epochs - 1)
    rows = []
    for epoch in range(1, done_epochs + 1):
        for s in range(steps_per_epoch):
            step = (epoch - 1) * steps_per_epoch + s + 1
            rows.append((epoch, step, "train", "loss", 1.0 / step))
        step = epoch * steps_per_epoch
        score = value * epoch / epochs
        rows += [(epoch, step, "train", "epoch_loss", 1.0 / epoch), (epoch, step, "val", "loss", 1.2 / epoch),
                 (epoch, step, "train", "lr", lr), (epoch, step, "train", "epoch_seconds", 2.0)]
        rows += [(epoch, step, "val", n, score) for n in names] + [(epoch, step, "train", names[0], score + 0.05)]
    store.log_metrics(run_id, rows)
    best = {n: value * done_epochs / epochs for n in names} | {"loss": 0.4}
    if task == "classification":
        best["confusion"] = [[3, 1], [0, 4]]
    monitor = names[0]
    store.update_run(run_id, epoch=done_epochs, progress=done_epochs / epochs, best_metric=monitor,
                     best_value=best[monitor], best_epoch=done_epochs, best=best, train_seconds=2.0 * done_epochs,
                     **extra)
    if status in ("running", "done"):
        store.update_run(run_id, started_at=store.now() - 10, heartbeat_at=store.now())
    return run_id
