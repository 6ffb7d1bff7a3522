"""``/login`` and ``/logout``: a password form and a signed, HttpOnly session cookie.

Failed attempts are limited per user name and address (``login_attempts_per_minute``),
counted in the database (:mod:`iceprod_server.db.logins`) so that the limit holds across
every server process; past it the form answers 429 until the minute is over.
"""

from __future__ import annotations

import time
from urllib.parse import urlparse

import tornado.web

from iceprod_server.db import logins, users
from iceprod_server.handlers.base import BaseHandler


def safe_next(url: str | None) -> str:
    """Only a path on this server: never redirect a login to another site."""
    if not url:
        return "/"
    parsed = urlparse(url)
    if parsed.scheme or parsed.netloc or not url.startswith("/") or url.startswith("//"):
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
        failures = await db.read(logins.recent_failures, username, ip, time.time())
        if failures >= self.services.config.login_attempts_per_minute:
            self.set_status(429)
            self.render("login.html", username=username, next_url=next_url,
                        error="Too many failed attempts. Wait a minute and try again.")
            return
        user = None
        if username and password:
            user = await self.services.db.read(users.verify_login, username, password)
        if user is None:
            await db.write(logins.login_failed, username, ip, time.time())
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
