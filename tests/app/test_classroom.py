"""Classroom mode in the browser (issue 14): login and its cookie, each student's own runs only, hidden test values,
the queue place, hand-in and bundle buttons, and the Instructor page. Without accounts nothing of this shows."""
from __future__ import annotations

import io
import re
import time
import zipfile
from dataclasses import replace

import pytest
from streamlit.runtime.pages_manager import PagesManager

from engine.accounts import users
from engine.classroom import assignments
from engine.config import RunConfig
from engine.data.demo import write_demo
from engine.data.manifest import list_datasets, load_manifest
from engine.runs import execute, store, submit
from engine.runs.submit import create_run
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
    assert str(cls.home) not in cls.texts(at.sidebar, "caption") and not at.sidebar.metric   # nothing of the server
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


def test_too_many_wrong_passwords_are_answered_with_a_wait_not_a_check(cls):
    at = cls.app()
    at.text_input(key="login_name").set_value("ana")
    for _ in range(users.LOGIN_TRIES):
        at.text_input(key="login_password").set_value("wrong")
        at.button[0].click().run()
    at.text_input(key="login_password").set_value(PASSWORDS["ana"])
    at.button[0].click().run()
    cls.no_exception(at)
    assert at.title[0].value == "Log in"
    assert "Too many wrong passwords for 'ana'" in cls.texts(at, "error")


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
    direct = cls.page("instructor.py")                    # the page file run on its own, by a student
    direct.session_state[_auth._NAME] = "ana"
    direct.run()
    cls.no_exception(direct)
    assert "This page is for instructors." in cls.texts(direct, "info")
    assert not direct.dataframe


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


# ---- queue place, hand-in, bundle, Predict ---------------------------------------------------------------------

def test_the_sidebar_shows_a_student_the_place_of_each_queued_run(cls, cls_dataset):
    config = RunConfig(dataset_id=cls_dataset, arch="lenet5", task="classification", epochs=1, image_size=32)
    for who, name in (("ben", "b1"), ("ben", "b2"), ("ana", "a1")):
        submit.submit(replace(config, name=name), actor=users.get_actor(who))
    at = log_in(cls, "ana")
    # round robin: ben's first, then ana's first (before ben's second)
    assert "Your run a1 is number 2 in the queue." in cls.texts(at.sidebar, "caption")
    assert "b1" not in cls.texts(at.sidebar, "caption")


def _trained(dataset_id: str, owner: str) -> str:
    config = RunConfig(dataset_id=dataset_id, arch="lenet5", epochs=1, batch_size=8, image_size=32, preview_samples=0)
    run_id = create_run(config, status="running")
    store.update_run(run_id, owner=owner)
    assert execute.run_job(run_id)["status"] == "done"
    return run_id


@pytest.fixture
def lab(cls, cls_dataset) -> dict:
    """An assignment with a hidden test and a finished run of ana's on its dataset."""
    assignments.create_assignment(users.get_actor("prof"), cls_dataset, "lab1", hide_test=True)
    return {"run": _trained(cls_dataset, "ana"), "dataset": cls_dataset}


def test_a_student_hands_in_from_monitor_and_the_instructor_sees_the_leaderboard(cls, lab):
    at = as_user(cls, "ana", "pages/monitor.py")
    assert at.selectbox(key="monitor_run").value == lab["run"]
    at.button(key="monitor_handin").click().run()
    cls.no_exception(at)
    assert "Handed in to lab1." in cls.texts(at, "success")
    assert "Its test" not in cls.texts(at, "success")                 # hidden: no score for the student
    assert "monitor_handin" not in [b.key for b in at.button]
    teacher = as_user(cls, "prof", "pages/instructor.py")
    (board,) = [f for f in frames(teacher) if "Rank" in f.columns]
    assert board["Student"].tolist() == ["ana"] and board["Test score"].notna().all()
    teacher.toggle(key="instructor_pseudo_lab1").set_value(True).run()
    (board,) = [f for f in frames(teacher) if "Rank" in f.columns]
    assert board["Student"].tolist() != ["ana"]
    assert teacher.get("download_button")


def test_monitor_downloads_a_reproducible_bundle(cls, lab):
    at = as_user(cls, "ana", "pages/monitor.py")
    at.button(key="monitor_bundle_build").click().run()
    cls.no_exception(at)
    data = at.session_state[f"monitor_bundle_{lab['run']}"]
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert "config.json" in names and "README.txt" in names


def test_predict_offers_no_test_split_while_the_assignment_hides_it(cls, lab):
    at = as_user(cls, "ana", "pages/predict.py")
    cls.no_exception(at)
    assert at.radio(key="predict_source").options == ["Upload images", "Upload a ZIP"]
    assert "hidden until your instructor releases it" in cls.rendered(everything(at))
    teacher = as_user(cls, "prof", "pages/predict.py")
    assert "Test-split samples" in teacher.radio(key="predict_source").options


def test_the_data_page_shows_a_student_no_test_images_of_an_assignment(cls, lab):
    def explore(who: str):
        at = as_user(cls, who, "pages/data.py")
        at.session_state["data_section"] = "Explore a dataset"
        at.run()
        cls.no_exception(at)
        return at
    at = explore("ana")
    assert "stays hidden until your instructor releases it" in cls.texts(at, "info")
    assert "test" not in at.selectbox(key="gallery_split").options
    (counts,) = [f for f in frames(at) if "test" in f.columns or "train" in f.columns][:1]
    assert "test" not in counts.columns
    assert "test" in explore("prof").selectbox(key="gallery_split").options


# ---- Instructor page -------------------------------------------------------------------------------------------

def test_the_instructor_creates_an_assignment_and_releases_its_test(cls, cls_dataset, two_runs):
    at = as_user(cls, "prof", "pages/instructor.py")
    cls.no_exception(at)
    (people,) = [f for f in frames(at) if "User" in f.columns]
    assert set(people["User"]) == {"ana", "ben", "prof"}
    assert people.set_index("User").loc["ana", "Done"] == 1
    at.text_input(key="instructor_name").set_value("lab 2")
    at.number_input(key="instructor_runs_per_student").set_value(3)
    at.button(key="FormSubmitter:instructor_create-Create the assignment").click().run()
    cls.no_exception(at)
    assert "Created assignment lab 2." in cls.texts(at, "success")
    found = assignments.get_assignment("lab 2")
    assert (found["hide_test"], found["runs_per_student"], found["released"]) == (True, 3, False)
    at.button(key="instructor_release_lab 2").click().run()
    cls.no_exception(at)
    assert assignments.get_assignment("lab 2")["released"] is True
    assert "instructor_release_lab 2" not in [b.key for b in at.button]


def test_an_upload_belongs_to_the_student_and_other_students_do_not_see_it(cls, tmp_path):
    archive = write_demo("classification", tmp_path / "xray.zip", n=16, size=32, seed=2).read_bytes()
    at = as_user(cls, "ana", "pages/data.py")
    at.radio(key="upload_task").set_value("classification")
    at.file_uploader(key="zip_0").set_value(("xray.zip", archive, "application/zip"))
    at.run()
    at.button(key="ingest").click().run()
    cls.no_exception(at)
    (dataset,) = list_datasets()
    assert load_manifest(dataset["id"])["owner"] == "ana"
    assert "There is no dataset yet" in cls.texts(as_user(cls, "ben", "pages/train.py"), "info")
    assert as_user(cls, "prof", "pages/train.py").selectbox(key="train_dataset_id").value == dataset["id"]
