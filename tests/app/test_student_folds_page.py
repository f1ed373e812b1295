"""The Train page queues a student's cross-validation (issue 14): the fold runs are the student's, and a
cross-validation that needs more places than the assignment leaves is refused in one line with nothing recorded."""
from __future__ import annotations

import pytest
from streamlit.runtime.pages_manager import PagesManager

from engine.accounts import users
from engine.classroom import assignments
from engine.runs import store


@pytest.fixture(autouse=True)
def app_script_runs_every_time(monkeypatch):
    """streamlit_app.py (the login gate) runs on every AppTest run, as on the server (see test_classroom.py)."""
    original = PagesManager.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False
    monkeypatch.setattr(PagesManager, "__init__", init)


def _train_page_as(lb, name: str, password: str):
    at = lb.app()
    at.text_input(key="login_name").set_value(name)
    at.text_input(key="login_password").set_value(password)
    at.button[0].click().run()
    at.switch_page("pages/train.py").run()
    lb.no_exception(at)
    return at


def test_a_student_queues_their_own_folds_within_the_assignments_places(lb, cls_dataset):
    users.add_user("ana", "student", "ana-pass-1")
    users.add_user("prof", "instructor", "prof-pass-3")
    assignments.create_assignment(None, cls_dataset, "lab", runs_per_student=3)
    at = _train_page_as(lb, "ana", "ana-pass-1")
    at.number_input(key="train_folds").set_value(2).run()
    at.button(key="train_queue").click().run()
    lb.no_exception(at)
    assert "Queued 2 cross-validation runs" in lb.texts(at, "success")
    assert [(r["owner"], r["trial"]) for r in sorted(store.list_runs(), key=lambda r: r["trial"])] == [
        ("ana", 1), ("ana", 2)]
    at.button(key="train_queue").click().run()          # 2 of 3 places used: 2 more folds do not fit
    lb.no_exception(at)
    assert "cross-validation with 2 folds needs 2 runs; you have 1 left" in lb.texts(at, "error")
    assert len(store.list_runs()) == 2
