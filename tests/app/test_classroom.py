"""Classroom mode in the browser (issue 14): login and its cookie, each student's own runs only, hidden test values,
the queue place, hand-in and bundle buttons, and the Instructor page. Without accounts nothing of this shows."""
from __future__ import annotations

import re
import time

import pytest
from streamlit.runtime.pages_manager import PagesManager

from engine.accounts import users
from engine.classroom import assignments
from engine.runs import store
from pages import _auth

PASSWORDS = {"ana": "ana-pass-1", "ben": "ben-pass-2", "prof": "prof-pass-3"}


@pytest.fixture(autouse=True)
def app_script_runs_every_time(monkeypatch):
    """Run streamlit_app.py on every AppTest run, as the server does. AppTest forgets between runs that the app
    calls st.navigation, sees the pages/ folder and, from the second run on, runs the page file alone (the old
    pages-folder mode), so the login gate and the sidebar would not run after a click."""
    original = PagesManager.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False
    monkeypatch.setattr(PagesManager, "__init__", init)


@pytest.fixture
def cls(lb):
    """Two students and an instructor in this test's workspace."""
    users.add_user("ana", "student", PASSWORDS["ana"])
    users.add_user("ben", "student", PASSWORDS["ben"])
    users.add_user("prof", "instructor", PASSWORDS["prof"])
    return lb


def log_in(lb, name: str, password: str | None = None):
    """The whole app, logged in as `name` through the login form."""
    at = lb.app()
    assert at.title[0].value == "Log in"
    at.text_input(key="login_name").set_value(name)
    at.text_input(key="login_password").set_value(password or PASSWORDS[name])
    at.button[0].click().run()
    lb.no_exception(at)
    return at


def as_user(lb, name: str, page: str | None = None):
    """The app as `name`, switched to one page."""
    at = log_in(lb, name)
    if page:
        at.switch_page(page).run()
    lb.no_exception(at)
    return at


def cookie_token(at) -> str:
    """The token the page told the browser to keep (what a reload sends back)."""
    script = at.session_state[_auth._SCRIPT]
    return re.search(_auth.COOKIE + r"=([^;]*);", script).group(1)


# ---- no accounts: nothing changes ------------------------------------------------------------------------------

def test_without_accounts_there_is_no_login_and_no_instructor_page(lb):
    at = lb.app()
    lb.no_exception(at)
    assert at.title[0].value == "Lightbox"
    assert "auth_logout" not in [b.key for b in at.sidebar.button]
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page("pages/instructor.py")       # not in the menu


# ---- login -----------------------------------------------------------------------------------------------------

def test_with_accounts_only_the_login_page_shows_until_a_password_matches(cls):
    at = cls.app()
    cls.no_exception(at)
    assert at.title[0].value == "Log in"
    assert [t.label for t in at.text_input] == ["User name", "Password"]
    at.text_input(key="login_name").set_value("ana")
    at.text_input(key="login_password").set_value("wrong")
    at.button[0].click().run()
    assert "do not match" in cls.texts(at, "error")
    assert at.title[0].value == "Log in"
    at.text_input(key="login_password").set_value(PASSWORDS["ana"])
    at.button[0].click().run()
    cls.no_exception(at)
    assert at.title[0].value == "Lightbox"
    assert "Logged in as **ana** (student)" in cls.texts(at.sidebar, "caption")
    assert PASSWORDS["ana"] not in at.session_state[_auth._SCRIPT]


def test_a_page_opened_on_its_own_asks_for_a_login(cls):
    at = cls.page("monitor.py").run()
    cls.no_exception(at)
    assert "Log in first" in cls.texts(at, "info")


def test_the_session_survives_a_reload_through_the_signed_cookie(cls, monkeypatch):
    token = cookie_token(log_in(cls, "ana"))
    assert token.startswith("ana|") and PASSWORDS["ana"] not in token
    monkeypatch.setattr(_auth, "browser_cookie", lambda: token)       # a new tab or a reload sends the cookie
    at = cls.app()
    cls.no_exception(at)
    assert at.title[0].value == "Lightbox"
    assert "Logged in as **ana** (student)" in cls.texts(at.sidebar, "caption")


@pytest.mark.parametrize("forge", ["other name", "later expiry", "expired", "garbage"])
def test_an_altered_or_expired_cookie_logs_nobody_in(cls, monkeypatch, forge):
    token = _auth.make_token("ana")
    _, expires, signature = token.split("|")
    bad = {"other name": f"prof|{expires}|{signature}",
           "later expiry": f"ana|{int(expires) + 3600}|{signature}",
           "expired": _auth.make_token("ana", now=time.time() - 13 * 3600),
           "garbage": "ana"}[forge]
    monkeypatch.setattr(_auth, "browser_cookie", lambda: bad)
    at = cls.app()
    cls.no_exception(at)
    assert at.title[0].value == "Log in"


def test_log_out_clears_the_session_and_the_cookie(cls, monkeypatch):
    at = log_in(cls, "ana")
    token = cookie_token(at)
    monkeypatch.setattr(_auth, "browser_cookie", lambda: token)       # this tab connected with the cookie
    at.sidebar.button(key="auth_logout").click().run()
    cls.no_exception(at)
    assert at.title[0].value == "Log in"
    assert "Max-Age=0" in at.session_state[_auth._SCRIPT]
    at.run()                                                          # the old cookie does not log back in
    assert at.title[0].value == "Log in"


def test_a_removed_user_is_logged_out_at_the_next_click(cls):
    at = log_in(cls, "ben")
    users.remove_user("ben")
    at.run()
    cls.no_exception(at)
    assert at.title[0].value == "Log in"


def test_the_instructor_page_is_in_an_instructors_menu_only(cls):
    at = as_user(cls, "prof", "pages/instructor.py")
    assert at.title[0].value == "Instructor"
    student = log_in(cls, "ana")
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        student.switch_page("pages/instructor.py")


# ---- own runs only ---------------------------------------------------------------------------------------------

TEST_VALUE = 0.2468          # a test score no page may show a student while the assignment hides it


def everything(at) -> str:
    """Every element of the page, as its protobuf text (labels, values, options, captions), joined."""
    out = []

    def walk(node) -> None:
        if getattr(node, "proto", None) is not None:
            out.append(str(node.proto))
        for child in getattr(node, "children", {}).values():
            walk(child)
    walk(at._tree)
    return "\n".join(out)


def frames(at) -> list:
    return [d.value for d in at.dataframe]


@pytest.fixture
def two_runs(cls, cls_dataset) -> dict:
    """A finished run each for ana and ben on the same dataset, both with test results."""
    test = {"accuracy": TEST_VALUE, "balanced_accuracy": TEST_VALUE, "n": 4}
    return {who: cls.fake_run(cls_dataset, "classification", name=f"{who}'s run", owner=who, test=test)
            for who in ("ana", "ben")}


def test_a_student_sees_only_their_own_runs_on_every_page(cls, two_runs):
    for page, key in (("pages/monitor.py", "monitor_run"), ("pages/compare.py", None)):
        at = as_user(cls, "ana", page)
        text = everything(at)
        assert "ana's run" in cls.rendered(text) and "ben's run" not in cls.rendered(text), page
        assert two_runs["ben"] not in text, page
        if key:
            assert len(at.selectbox(key=key).options) == 1 and at.selectbox(key=key).value == two_runs["ana"]
    teacher = as_user(cls, "prof", "pages/monitor.py")
    assert len(teacher.selectbox(key="monitor_run").options) == 2         # an instructor sees everyone's


def test_another_students_run_by_its_address_is_not_shown(cls, two_runs):
    at = log_in(cls, "ana")
    at.query_params["run"] = two_runs["ben"]
    at.switch_page("pages/monitor.py").run()
    cls.no_exception(at)
    assert "There is no run" in cls.texts(at, "error")
    assert at.selectbox(key="monitor_run").value == two_runs["ana"]
    assert "ben's run" not in cls.rendered(everything(at))


def test_stop_and_delete_of_a_run_that_is_not_yours_are_refused_by_the_engine(cls, cls_dataset):
    """The page offers the buttons for one's own run only; when the run is not hers by the click (another tab
    reassigned it), the engine's check refuses in one line and nothing happens."""
    run_id = cls.fake_run(cls_dataset, "classification", name="mine", status="running", owner="ana")
    at = as_user(cls, "ana", "pages/monitor.py")
    assert at.selectbox(key="monitor_run").value == run_id
    store.update_run(run_id, owner="ben")
    at.button(key="monitor_stop").click().run()
    cls.no_exception(at)
    assert "belongs to another user; you can only stop your own runs" in cls.texts(at, "error")
    assert store.get_run(run_id)["cancel_requested"] is False
    store.update_run(run_id, owner="ana", status="cancelled")
    at.run()
    at.checkbox(key=f"monitor_delete_sure_{run_id}").check().run()
    store.update_run(run_id, owner="ben")
    at.button(key="monitor_delete").click().run()
    cls.no_exception(at)
    assert "you can only delete your own runs" in cls.texts(at, "error")
    assert store.get_run(run_id) is not None


# ---- hidden test values ----------------------------------------------------------------------------------------

def test_hidden_test_values_never_reach_a_students_pages(cls, two_runs, cls_dataset):
    assignments.create_assignment(users.get_actor("prof"), cls_dataset, "lab1", hide_test=True)
    for page in ("pages/monitor.py", "pages/compare.py"):
        at = as_user(cls, "ana", page)
        assert "0.247" not in everything(at) and "0.2468" not in everything(at), page
        for frame in frames(at):
            assert TEST_VALUE not in frame.to_numpy().ravel().tolist(), page
    teacher = as_user(cls, "prof", "pages/monitor.py")
    teacher.selectbox(key="monitor_run").set_value(two_runs["ana"]).run()
    assert "0.247" in everything(teacher)                  # the instructor sees them
    assignments.release(users.get_actor("prof"), "lab1")
    at = as_user(cls, "ana", "pages/monitor.py")
    assert "0.247" in everything(at)                       # and the students too, once released
