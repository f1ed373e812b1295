"""The login form: drawn in place of any page while this Lightbox has user accounts and nobody is logged in in this
tab, so the page that was asked for (a bookmarked /monitor?run=…) opens once the password matches."""
from __future__ import annotations

import streamlit as st

from pages import _auth as auth
from pages import _widgets as w


def login_form() -> None:
    st.title("Log in")
    st.caption("This Lightbox is shared by a class. Log in with the name and password your instructor gave you.")
    with st.form("login_form"):
        name = st.text_input("User name", key="login_name")
        password = st.text_input("Password", type="password", key="login_password")
        pressed = st.form_submit_button("Log in", type="primary")
    if pressed:
        with w.shows_errors("Logging in"):
            if auth.log_in(name.strip(), password) is None:
                st.error("That user name and password do not match; check both, or ask your instructor.")
            else:
                st.rerun()          # the app now shows the pages of this user
