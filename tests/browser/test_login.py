"""Logging in and out through the form, as a person does it."""

from __future__ import annotations

from typing import Any

from tests.browser.helpers import PASSWORD, Shots, Site, login


def test_wrong_password_then_right_one(page: Any, site: Site, shot: Shots) -> None:
    page.goto("/login")
    page.fill("#username", "alice")
    page.fill("#password", "not-the-password")
    page.click("#login-submit")
    error = page.locator("#login-error")
    error.wait_for(state="visible")
    shot(page, "wrong-password")
    assert "wrong user name or password" in error.inner_text().lower(), error.inner_text()
    assert "/login" in page.url
    assert page.input_value("#username") == "alice", "the form should keep the user name"
    assert page.input_value("#password") == "", "the form must not echo the password"

    page.fill("#password", PASSWORD)
    with page.expect_navigation():
        page.click("#login-submit")
    shot(page, "logged-in")
    assert "/login" not in page.url, page.url
    top = page.locator("header").inner_text()
    assert "alice" in top, f"the top bar should name the user: {top!r}"
    assert "Log out" in top, top
    assert page.locator("#login-error").count() == 0


def test_login_returns_to_the_page_asked_for_and_logout_ends_it(page: Any, site: Site,
                                                               shot: Shots) -> None:
    login(page, "bob", next_url="/dataset")
    assert page.url.endswith("/dataset"), f"login should go back to /dataset: {page.url}"
    assert "bob" in page.locator("header").inner_text()

    with page.expect_navigation():
        page.get_by_role("button", name="Log out").click()
    shot(page, "logged-out")
    top = page.locator("header").inner_text()
    assert "bob" not in top and "Log in" in top, f"still logged in after logging out: {top!r}"
    cookies = {c["name"] for c in page.context.cookies()}
    assert "iceprod_session" not in cookies, cookies
