"""``/login`` and ``/logout``: a password form and a signed, HttpOnly session cookie.

Failed attempts are limited per user name and address (``login_attempts_per_minute``);
past the limit the form answers 429 until the minute is over.
"""

from __future__ import annotations

import collections
import time
from urllib.parse import urlparse

import tornado.web

from iceprod_server.db import users
from iceprod_server.handlers.base import BaseHandler


class LoginLimiter:
    """Failed logins per (user name, address) in a sliding minute, in this process."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._failures: dict[tuple[str, str], collections.deque[float]] = {}

    def _recent(self, key: tuple[str, str]) -> collections.deque[float]:
        now = time.monotonic()
        failures = self._failures.setdefault(key, collections.deque())
        while failures and failures[0] < now - 60.0:
            failures.popleft()
        return failures

    def blocked(self, username: str, ip: str) -> bool:
        return len(self._recent((username, ip))) >= self.per_minute

    def failed(self, username: str, ip: str) -> None:
        if len(self._failures) > 100_000:
            self._failures.clear()
        self._recent((username, ip)).append(time.monotonic())

    def succeeded(self, username: str, ip: str) -> None:
        self._failures.pop((username, ip), None)


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

    def initialize(self, limiter: LoginLimiter) -> None:
        self.limiter = limiter

    def get(self) -> None:
        self.render("login.html", error="", username="",
                    next_url=safe_next(self.get_argument("next", "/")))

    async def post(self) -> None:
        username = self.get_body_argument("username", "").strip()
        password = self.get_body_argument("password", "")
        next_url = safe_next(self.get_body_argument("next", "/"))
        ip = self.remote_ip()
        if self.limiter.blocked(username, ip):
            self.set_status(429)
            self.render("login.html", username=username, next_url=next_url,
                        error="Too many failed attempts. Wait a minute and try again.")
            return
        user = None
        if username and password:
            user = await self.services.db.read(users.verify_login, username, password)
        if user is None:
            self.limiter.failed(username, ip)
            self.set_status(401)
            self.render("login.html", username=username, next_url=next_url,
                        error="Wrong user name or password.")
            return
        self.limiter.succeeded(username, ip)
        await self.start_session(user["user_id"])
        self.redirect(next_url)


class LogoutHandler(BaseHandler):
    async def get(self) -> None:
        await self.end_session()
        self.redirect("/")

    async def post(self) -> None:
        await self.end_session()
        self.redirect("/")


def routes(limiter: LoginLimiter) -> list[tuple[str, type[tornado.web.RequestHandler],
                                               dict[str, object]] | tuple[str, type]]:
    return [(r"/login", LoginHandler, {"limiter": limiter}), (r"/logout", LogoutHandler)]
