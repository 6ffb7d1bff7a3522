"""The base handler: credentials, the login session, error pages, and the services every
handler reaches.

A request is authenticated by a passkey (``Authorization: Bearer``), a site's credentials,
or the signed login cookie of a human. Pages load the human in ``prepare``; the JSON-RPC
endpoint asks :meth:`caller_from_request`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import tornado.escape
import tornado.httputil
import tornado.web

from iceprod_server import log_format
from iceprod_server.caller import ANONYMOUS, Caller
from iceprod_server.db import users
from iceprod_server.errors import NotAuthenticated, Unavailable
from iceprod_server.files import access
from iceprod_server.handlers.peer import Peer, peer_address
from iceprod_server.services import Services

log = logging.getLogger(__name__)

SESSION_COOKIE = "iceprod_session"


def close_after_answer(connection: Any) -> None:
    """End a keep-alive connection after this answer, with ``Connection: close``, so that
    its client opens its next connection to a server that is not stopping. Tornado has no
    public switch for this; without it the connection is closed after the grace time."""
    if hasattr(connection, "_disconnect_on_finish"):
        connection._disconnect_on_finish = True


class BaseHandler(tornado.web.RequestHandler):
    caller: Caller = ANONYMOUS
    # whether the message of a 5xx HTTPError is shown (it is written for the caller), or
    # only the generic reason (it may describe internals)
    explains_server_errors = False
    # whether a 401 says how to authenticate (WWW-Authenticate: Bearer): for routes that
    # programs call with a passkey, not for pages
    bearer_challenge = False

    def __init__(self, application: tornado.web.Application,
                 request: tornado.httputil.HTTPServerRequest, **kwargs: Any) -> None:
        super().__init__(application, request, **kwargs)
        given = request.headers.get("X-Request-Id") if self.from_trusted_proxy() else None
        self.request_id = log_format.new_request_id(given)
        log_format.REQUEST_ID.set(self.request_id)
        self.set_header("X-Request-Id", self.request_id)
        # counted until it finishes or its client goes away: a stopping server waits
        self._in_flight = True
        requests = self.services.requests
        requests.enter()
        if requests.draining:
            close_after_answer(request.connection)

    def _left(self) -> None:
        if self._in_flight:
            self._in_flight = False
            self.services.requests.leave()

    def on_finish(self) -> None:
        self._left()

    def on_connection_close(self) -> None:
        self._left()
        super().on_connection_close()

    @property
    def services(self) -> Services:
        services: Services = self.settings["services"]
        return services

    async def prepare(self) -> None:
        self.caller = await self.session_caller() or ANONYMOUS

    def get_current_user(self) -> Caller | None:
        return self.caller if self.caller.role else None

    # -- credentials -------------------------------------------------------------------

    @property
    def peer(self) -> Peer:
        peer: Peer | None = getattr(self, "_peer", None)
        if peer is None:
            address = peer_address(self.request.connection, self.request.remote_ip or "")
            peer = self._peer = Peer(self.request.headers, address, self.request.protocol,
                                     self.services.config)
        return peer

    def bearer_token(self) -> str | None:
        return self.peer.bearer_token()

    def refuse_other_schemes(self) -> None:
        self.peer.refuse_other_schemes()

    def from_trusted_proxy(self) -> bool:
        return self.peer.from_trusted_proxy()

    def remote_ip(self) -> str:
        return self.peer.remote_ip()

    def over_https(self) -> bool:
        return self.peer.over_https()

    async def caller_from_request(self, legacy_passkey: str | None = None,
                                  legacy_site_id: str | None = None) -> Caller:
        """Authenticate: Bearer header first, then the legacy params, then the login
        cookie (whose XSRF token the handler has checked already)."""
        return await self.peer.caller(self.services.auth, legacy_passkey, legacy_site_id,
                                      self.caller)

    # -- login session -----------------------------------------------------------------

    async def session_caller(self) -> Caller | None:
        """The logged-in human, from the signed cookie, if the login is still valid."""
        days = self.services.config.session_hours / 24.0
        raw = self.get_signed_cookie(SESSION_COOKIE, max_age_days=days)
        if not raw:
            return None
        return await self.services.auth.from_session(raw.decode())

    async def start_session(self, user_id: str) -> None:
        config = self.services.config
        token = await self.services.db.write(users.create_session, user_id,
                                             config.session_hours)
        self.set_signed_cookie(SESSION_COOKIE, token, expires_days=config.session_hours / 24.0,
                               httponly=True, secure=self.cookie_secure(), samesite="Lax")

    async def end_session(self) -> None:
        raw = self.get_signed_cookie(SESSION_COOKIE)
        if raw:
            await self.services.db.write(users.end_session, raw.decode())
            self.services.auth.forget_session(raw.decode())
        self.clear_cookie(SESSION_COOKIE)

    def cookie_secure(self) -> bool:
        mode = self.services.config.cookie_secure
        if mode == "auto":
            return self.over_https()
        return mode == "always"

    # -- pages -------------------------------------------------------------------------

    def get_template_namespace(self) -> dict[str, Any]:
        namespace = super().get_template_namespace()
        namespace.update(caller=self.caller, public_read=self.services.config.public_read,
                         json_dumps=json.dumps)
        return namespace

    def wants_json(self) -> bool:
        accept = self.request.headers.get("Accept", "")
        return (self.request.path.startswith(("/jsonrpc", "/healthz", "/api"))
                or ("application/json" in accept and "text/html" not in accept))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 401 and self.bearer_challenge:
            # set here: send_error() clears the headers set before the error was raised
            self.set_header("WWW-Authenticate", 'Bearer realm="iceprod"')
        reason = self._reason
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, tornado.web.HTTPError) and exc.log_message and (
                status_code < 500 or self.explains_server_errors):
            reason = exc.log_message % exc.args if exc.args else exc.log_message
        if self.wants_json():
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"status": status_code, "error": reason}))
            return
        self.render("error.html", status_code=status_code, reason=reason)


class FileAccessHandler(BaseHandler):
    """Downloads, uploads and the proxy: a passkey (``Authorization: Bearer``) or a login
    session, checked against an access rule (see :mod:`iceprod_server.files.access`).

    The XSRF token is checked in :meth:`authorize`, and only for a browser session on a
    state-changing request: a passkey caller has no cookie to forge."""

    bearer_challenge = True

    # "the disk is full", "the source timed out": said for the caller
    explains_server_errors = True

    def check_xsrf_cookie(self) -> None:
        pass

    async def prepare(self) -> None:
        # the caller is found in authorize(), once the handler knows which rule applies
        pass

    async def authorize(self, rule: str) -> Caller:
        """The caller, if ``rule`` lets them in; else HTTP 401 (no or a bad credential)
        or 403 (a valid one without the role)."""
        try:
            self.refuse_other_schemes()
            if self.bearer_token() is not None:
                self.caller = await self.caller_from_request()
            else:
                self.caller = await self.session_caller() or ANONYMOUS
                if self.caller.role is not None and self.request.method not in (
                        "GET", "HEAD", "OPTIONS"):
                    tornado.web.RequestHandler.check_xsrf_cookie(self)
        except NotAuthenticated as e:
            raise tornado.web.HTTPError(401, "%s", e.reason) from e
        except Unavailable as e:
            raise tornado.web.HTTPError(503, "%s", e.reason) from e
        if not access.allows(rule, self.caller):
            if self.caller.role is None:
                raise tornado.web.HTTPError(401, "a passkey (Authorization: Bearer) or a "
                                                 "login is needed")
            raise tornado.web.HTTPError(403, "role %s may not do this here",
                                        self.caller.role)
        return self.caller

    def wants_json(self) -> bool:
        return True

class PageHandler(BaseHandler):
    """A page: readable without login while ``public_read`` is on."""

    public = True

    async def prepare(self) -> None:
        await super().prepare()
        if self.caller.role is None and not (self.public and
                                             self.services.config.public_read):
            url = self.get_login_url() + "?next=" + tornado.escape.url_escape(self.request.uri
                                                                              or "/")
            self.redirect(url)


class AdminPageHandler(PageHandler):
    public = False

    async def prepare(self) -> None:
        await super().prepare()
        if self._finished:
            return
        if not self.caller.is_admin:
            raise tornado.web.HTTPError(403, "this page is for administrators")
