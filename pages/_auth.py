"""Who is using this browser tab: the login session of classroom mode.

With no accounts in the store (engine.accounts.users.accounts_enabled() False) nobody logs in and every page gets
actor None, which the engine reads as full access: Lightbox as it always was.

With accounts, a login puts the user's name in the session and in a signed cookie, so a reload (a new Streamlit
session) still knows who it is. The cookie holds `name|expiry|HMAC-SHA256(workspace secret, name|expiry)`: no
password and no token that outlives its expiry; a forged, altered or expired cookie is ignored, and a removed user
is logged out at the next click (the name is looked up again on every run). Streamlit reads cookies only from the
request that opened the session (st.context.cookies), so the cookie is written by a line of JavaScript in the
page (st.html) and read back on the next reload. It is not HttpOnly (JavaScript wrote it): the pages show every
user-typed text escaped (pages._widgets.as_text), and it is SameSite=Strict, so other sites cannot send it.
"""
from __future__ import annotations

import hashlib
import hmac
import time

import streamlit as st

from engine import workspace
from engine.accounts import access, users
from engine.accounts.actor import Actor
from engine.classroom import assignments
from engine.errors import UserError

COOKIE = "lightbox_session"
SESSION_HOURS = 12          # one teaching day; then the student logs in again
_NAME = "auth_user"         # st.session_state keys
_SCRIPT = "auth_cookie_script"
_IGNORED = "auth_ignored_cookie"


# ---- the signed token ----------------------------------------------------------------------------------------

def _signature(payload: str) -> str:
    return hmac.new(workspace.secret_key(), payload.encode(), hashlib.sha256).hexdigest()


def make_token(name: str, now: float | None = None, hours: float = SESSION_HOURS) -> str:
    expires = int((now if now is not None else time.time()) + hours * 3600)
    payload = f"{name}|{expires}"
    return f"{payload}|{_signature(payload)}"


def name_in_token(token: object, now: float | None = None) -> str | None:
    """The user name a token was signed for, or None when it is not one of ours, altered or expired."""
    if not isinstance(token, str) or token.count("|") != 2 or len(token) > 300:
        return None
    name, expires, signature = token.split("|")
    if not hmac.compare_digest(signature, _signature(f"{name}|{expires}")):
        return None
    if not expires.isdigit() or int(expires) < (now if now is not None else time.time()):
        return None
    return name


# ---- the browser's cookie ------------------------------------------------------------------------------------

def browser_cookie() -> str | None:
    """The session cookie the browser sent when this tab connected (tests replace this function)."""
    try:
        return st.context.cookies.get(COOKIE)
    except Exception:  # noqa: BLE001 - no browser (a bare script run): no cookie
        return None


def _cookie_script(value: str, max_age: int) -> str:
    # The value is ours (a user name of letters, digits . _ - and hex), so it needs no quoting in JavaScript.
    return ("<script>document.cookie = '" + COOKIE + "=" + value + "; Max-Age=" + str(max_age)
            + "; Path=/; SameSite=Strict' + (location.protocol === 'https:' ? '; Secure' : '');</script>")


def write_cookie() -> None:
    """Send the pending cookie line to the browser. Called on every run (sidebar): a run cut short by st.rerun
    or st.switch_page never reaches the browser, so the line stays pending for the whole session."""
    script = st.session_state.get(_SCRIPT)
    if script:
        st.html(script, unsafe_allow_javascript=True, width="content")


# ---- the session ---------------------------------------------------------------------------------------------

def accounts_on() -> bool:
    return users.accounts_enabled()


def log_in(name: str, password: str) -> Actor | None:
    """Check the password (engine); on success the tab and its cookie belong to that user."""
    actor = users.verify(name, password)
    if actor is not None:
        st.session_state[_NAME] = actor.name
        st.session_state.pop(_IGNORED, None)
        st.session_state[_SCRIPT] = _cookie_script(make_token(actor.name), SESSION_HOURS * 3600)
    return actor


def log_out() -> None:
    """Forget the user in this tab and clear the cookie (the one this tab connected with stays ignored)."""
    st.session_state.pop(_NAME, None)
    st.session_state[_IGNORED] = browser_cookie()
    st.session_state[_SCRIPT] = _cookie_script("", 0)


def signed_in() -> Actor | None:
    """The user of this tab: from the session, else from a valid cookie; None when nobody is logged in."""
    name = st.session_state.get(_NAME)
    if name is None:
        token = browser_cookie()
        if token and token != st.session_state.get(_IGNORED):
            name = name_in_token(token)
    if name is None:
        return None
    try:
        actor = users.get_actor(name)       # asked again on every run: a removed user is out at once
    except UserError:
        log_out()
        return None
    st.session_state[_NAME] = actor.name
    return actor


def page_actor() -> Actor | None:
    """For a page: None without accounts (full access); the logged-in user; else one line and the page stops."""
    if not accounts_on():
        return None
    actor = signed_in()
    if actor is None:
        st.info("Log in first: this Lightbox has user accounts.")
        st.stop()
    return actor


def is_student(actor: Actor | None) -> bool:
    return actor is not None and not actor.is_instructor


def shown_runs(actor: Actor | None, runs: list[dict]) -> list[dict]:
    """The runs this actor may see (the engine's rules), without the test values a student may not see yet."""
    runs = access.visible_runs(actor, runs)
    if not is_student(actor):
        return runs
    hidden = assignments.hidden_test_datasets()
    return [access.strip_hidden(actor, r, hidden) for r in runs]


def test_hidden(actor: Actor | None, dataset_id: str | None) -> bool:
    """Whether this actor may not see the test split of that dataset now (an assignment's hidden test)."""
    return assignments.hides_test_from(actor, dataset_id)


def acting(actor: Actor | None) -> dict:
    """Keyword arguments that tell an engine call who acts: none at all without accounts, so a single-user
    Lightbox calls the engine exactly as it always did."""
    return {} if actor is None else {"actor": actor}
