"""``/login`` and ``/logout``: a password form and a signed, HttpOnly session cookie.

Attempts are limited per user name and address (``login_attempts_per_minute``), counted
in the database (:mod:`iceprod_server.db.logins`) so that the limit holds across every
server process: each attempt is recorded before its password is checked, and one past the
limit answers 429, checking nothing, until the minute is over.
"""

from __future__ import annotations

import time
from urllib.parse import urljoin, urlsplit

import tornado.web

from iceprod_server.db import logins, users
from iceprod_server.handlers.base import BaseHandler

# stands for this server while a redirect target is resolved; never sent anywhere
_HERE = "http://this-server.invalid/"


def safe_next(url: str | None) -> str:
    """Where to go after logging in: ``url`` if it is a path on this server, else ``/``.

    Browsers read a backslash as a slash and drop tabs and newlines, so ``/\\evil.example``
    goes to another site as ``//evil.example`` would. A backslash or a control character
    anywhere refuses the target; so does anything that, resolved against this server,
    names another scheme or host."""
    if not url or not url.startswith("/") or url.startswith("//"):
        return "/"
    if "\\" in url or any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in url):
        return "/"
    parsed = urlsplit(url)
    resolved = urlsplit(urljoin(_HERE, url))
    if parsed.scheme or parsed.netloc or (resolved.scheme, resolved.netloc) != (
            "http", urlsplit(_HERE).netloc):
        return "/"
    return url


class LoginHandler(BaseHandler):
    def check_xsrf_cookie(self) -> None:
        # nothing to protect before a login exists; the session cookie is SameSite=Lax
        pass

    def get(self) -> None:
        self.render("login.html", error="", username="",
                    next_url=safe_next(self.get_argument("next", "/")))

    async def post(self) -> None:
        username = self.get_body_argument("username", "").strip()
        password = self.get_body_argument("password", "")
        next_url = safe_next(self.get_body_argument("next", "/"))
        ip = self.remote_ip()
        db = self.services.db
        now = time.time()
        # recorded (and committed) first, counted afterwards: see db.logins
        attempt = await db.write(logins.reserve_attempt, username, ip, now)
        attempts = await db.read(logins.recent_attempts, username, ip, now)
        if attempts > self.services.config.login_attempts_per_minute:
            await db.write(logins.release_attempt, attempt)
            self.set_status(429)
            self.render("login.html", username=username, next_url=next_url,
                        error="Too many failed attempts. Wait a minute and try again.")
            return
        user = None
        if username and password:
            user = await self.services.db.read(users.verify_login, username, password)
        if user is None:
            # the attempt's row stays: it is the failure counted for the next minute
            self.set_status(401)
            self.render("login.html", username=username, next_url=next_url,
                        error="Wrong user name or password.")
            return
        await db.write(logins.login_succeeded, username, ip)
        await self.start_session(user["user_id"])
        self.redirect(next_url)


class LogoutHandler(BaseHandler):
    async def get(self) -> None:
        await self.end_session()
        self.redirect("/")

    async def post(self) -> None:
        await self.end_session()
        self.redirect("/")


def routes() -> list[tuple[str, type[tornado.web.RequestHandler]]]:
    return [(r"/login", LoginHandler), (r"/logout", LogoutHandler)]
