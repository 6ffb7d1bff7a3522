"""``POST /jsonrpc``: the one JSON-RPC endpoint for humans, pilots and sites.

Most calls are pilots' and sites': small bodies, a passkey or no credential at all, no
cookie. Those are answered on the fast path (:class:`FastJSONRPC`), an HTTP message
delegate that the server hands the request to as soon as its head is read, with no
``RequestHandler``, routing or output transforms between the connection and the
dispatcher. It keeps what the handlers do for every request: the request id (and its
``X-Request-Id`` header), the count of requests in flight for a graceful stop, the access
log and the metrics (as ``JSONRPCHandler``), gzip for large answers. Every other request to
the endpoint (a browser session with its cookie and XSRF token, a body over the limits, a
server that is stopping) goes through the handlers below.

A body that says it is small (``Content-Length`` up to :data:`SMALL_BODY` bytes, which is
every pilot call) is read whole by Tornado before the handler runs: no streaming, no
chunk list. Any other body is read in a streaming handler so that an oversized request
is refused with 413 as soon as its size is known, without buffering it. Every JSON-RPC
response, errors included, is HTTP 200; notifications get 200 with an empty body.
Responses too small to gain from compression skip the gzip transform.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
from collections.abc import Awaitable
from typing import Any

import tornado
import tornado.web
from tornado import httputil
from tornado.httputil import HTTPServerRequest
from tornado.routing import PathMatches, Rule

from iceprod_server import log_format
from iceprod_server.caller import Caller
from iceprod_server.handlers.access import record_request
from iceprod_server.handlers.base import BaseHandler, close_after_answer
from iceprod_server.handlers.peer import Peer, peer_address
from iceprod_server.httpguard import Shortcut
from iceprod_server.rpc.dispatcher import Dispatcher
from iceprod_server.services import Services

log = logging.getLogger(__name__)

# bodies up to this many bytes (as Content-Length says) are not streamed
SMALL_BODY = 64 * 1024
# responses below this many bytes are sent as they are (Tornado's gzip minimum)
COMPRESS_FROM = 1024


class _JSONRPCBase(BaseHandler):
    # one name in the metrics and the access log, whichever way the body was read
    metrics_name = "JSONRPCHandler"

    def initialize(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        # the methods called, for the access log
        self.rpc_methods: list[str] = []

    def check_xsrf_cookie(self) -> None:
        # passkey callers carry no cookie: the token is checked in prepare, and only for
        # callers that a login cookie authenticates
        pass

    async def _check_session(self) -> None:
        if self.bearer_token() is None:
            await super().prepare()
            if self.caller.role is not None:
                # a browser session: the page must prove it is ours (XSRF token header)
                tornado.web.RequestHandler.check_xsrf_cookie(self)

    async def _answer(self, body: bytes) -> None:
        async def authenticate(passkey: str | None, site_id: str | None) -> Caller:
            caller = await self.caller_from_request(passkey, site_id)
            self.caller = caller  # for the access log's role
            return caller

        answer = await self.dispatcher.handle_body(body, authenticate, self.remote_ip(),
                                                   self.rpc_methods)
        self.set_status(200)
        self.set_header("Content-Type", "application/json")
        if answer is None:
            self.finish()
            return
        if len(answer) < COMPRESS_FROM:
            self._transforms = []
        self.finish(answer)


class JSONRPCHandler(_JSONRPCBase):
    """Small bodies, read whole before the handler runs."""

    async def prepare(self) -> None:
        if self.request.method != "POST":
            return
        limit = self.services.config.max_body_bytes
        if len(self.request.body) > limit:  # a limit below SMALL_BODY
            self.set_status(413)
            self.finish({"error": f"request body over {limit} bytes"})
            return
        await self._check_session()

    async def post(self) -> None:
        await self._answer(self.request.body)


@tornado.web.stream_request_body
class StreamingJSONRPCHandler(_JSONRPCBase):
    """Large bodies, or bodies of unknown length: refused with 413 once over the limit."""

    def initialize(self, dispatcher: Dispatcher) -> None:
        super().initialize(dispatcher)
        self.chunks: list[bytes] = []
        self.received = 0
        self.too_large = False

    async def prepare(self) -> None:
        if self.request.method != "POST":
            return
        limit = self.services.config.max_body_bytes
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > limit:
            self.too_large = True
            self.set_status(413)
            self.finish({"error": f"request body over {limit} bytes"})
            return
        if self.request.connection is not None:
            # Tornado itself refuses bodies over its own limit with 400; allow ours
            self.request.connection.set_max_body_size(limit + 1)  # type: ignore[attr-defined]
        await self._check_session()

    def data_received(self, chunk: bytes) -> None:
        if self.too_large:
            return
        self.received += len(chunk)
        if self.received > self.services.config.max_body_bytes:
            self.too_large = True
            self.chunks = []
            return
        self.chunks.append(chunk)

    async def post(self) -> None:
        if self.too_large:
            self.set_status(413)
            self.finish({"error": f"request body over {self.services.config.max_body_bytes}"
                                  " bytes"})
            return
        body = b"".join(self.chunks)
        self.chunks = []
        await self._answer(body)


class _SmallBody(PathMatches):
    """The path, for a request whose Content-Length is at most :data:`SMALL_BODY`."""

    def match(self, request: HTTPServerRequest) -> dict[str, Any] | None:
        length = request.headers.get("Content-Length")
        if length is None or not length.isdigit() or int(length) > SMALL_BODY:
            return None
        return super().match(request)


_SERVER = f"TornadoServer/{tornado.version}"
# the answers being made on the fast path: asyncio keeps only weak references to tasks
_answering: set[asyncio.Task[None]] = set()


class _Date:
    """The ``Date`` header, made once a second."""

    second = -1
    text = ""

    @classmethod
    def now(cls) -> str:
        now = time.time()
        if int(now) != cls.second:
            cls.second = int(now)
            cls.text = httputil.format_timestamp(now)
        return cls.text


def shortcut(app: tornado.web.Application) -> Shortcut:
    """The fast path of ``app``'s JSON-RPC endpoint, for :func:`~iceprod_server.httpguard.
    http_server`."""
    services: Services = app.settings["services"]
    dispatcher: Dispatcher = app.settings["dispatcher"]

    def take(start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders,
             connection: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate | None:
        return fast_path(services, dispatcher, start_line, headers, connection)
    return take


def fast_path(services: Services, dispatcher: Dispatcher, start_line: httputil.RequestStartLine,
              headers: httputil.HTTPHeaders,
              connection: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate | None:
    """The fast-path delegate for a request that it can answer, else None (the request
    then goes to the application)."""
    if start_line.method != "POST" or start_line.path != "/jsonrpc":
        return None
    length = headers.get("Content-Length")
    if (length is None or not length.isdigit() or "Cookie" in headers
            or "Transfer-Encoding" in headers or services.requests.draining):
        return None
    if int(length) > min(SMALL_BODY, services.config.max_body_bytes):
        return None
    return FastJSONRPC(services, dispatcher, connection, start_line, headers)


class FastJSONRPC(httputil.HTTPMessageDelegate):
    """One small ``POST /jsonrpc`` without a cookie, answered without a RequestHandler."""

    def __init__(self, services: Services, dispatcher: Dispatcher,
                 connection: httputil.HTTPConnection, start_line: httputil.RequestStartLine,
                 headers: httputil.HTTPHeaders) -> None:
        self.services = services
        self.dispatcher = dispatcher
        self.connection = connection
        self.headers = headers
        self.started = time.monotonic()
        self.chunks: list[bytes] = []
        self.rpc_methods: list[str] = []
        self.role: str | None = None
        self.closed = False
        context = getattr(connection, "context", None)
        self.peer = Peer(headers, peer_address(connection), getattr(context, "protocol", "http"),
                         services.config)
        given = headers.get("X-Request-Id") if self.peer.from_trusted_proxy() else None
        self.request_id = log_format.new_request_id(given)
        self.in_flight = True
        services.requests.enter()

    def headers_received(self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
                         headers: httputil.HTTPHeaders) -> Awaitable[None] | None:
        return None  # read in __init__

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        self.chunks.append(chunk)
        return None

    def finish(self) -> None:
        body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks = []
        task = asyncio.ensure_future(self._answer(body))
        _answering.add(task)
        task.add_done_callback(_answering.discard)

    def on_connection_close(self) -> None:
        self.closed = True
        self._left()

    def _left(self) -> None:
        if self.in_flight:
            self.in_flight = False
            self.services.requests.leave()

    async def _authenticate(self, passkey: str | None, site_id: str | None) -> Caller:
        caller = await self.peer.caller(self.services.auth, passkey, site_id)
        self.role = caller.role
        return caller

    async def _answer(self, body: bytes) -> None:
        log_format.REQUEST_ID.set(self.request_id)
        status = 200
        try:
            text = await self.dispatcher.handle_body(body, self._authenticate,
                                                     self.peer.remote_ip(), self.rpc_methods)
            answer = b"" if text is None else text.encode()
        except Exception:
            log.exception("internal error answering a JSON-RPC request")
            status = 500
            answer = b'{"status": 500, "error": "Internal Server Error"}'
        try:
            if not self.closed:
                self._write(status, answer)
        finally:
            record_request(JSONRPCHandler.metrics_name, "POST", "/jsonrpc", status,
                           time.monotonic() - self.started, self.role, self.request_id,
                           self.rpc_methods)
            self._left()

    def _write(self, status: int, answer: bytes) -> None:
        headers = httputil.HTTPHeaders()
        headers["Server"] = _SERVER
        headers["Content-Type"] = "application/json"
        headers["Date"] = _Date.now()
        headers["X-Request-Id"] = self.request_id
        if len(answer) >= COMPRESS_FROM:
            headers["Vary"] = "Accept-Encoding"
            if "gzip" in self.headers.get("Accept-Encoding", ""):
                headers["Content-Encoding"] = "gzip"
                answer = gzip.compress(answer, compresslevel=6)
        headers["Content-Length"] = str(len(answer))
        if self.services.requests.draining:
            close_after_answer(self.connection)
        reason = "OK" if status == 200 else "Internal Server Error"
        self.connection.write_headers(httputil.ResponseStartLine("HTTP/1.1", status, reason),
                                      headers, answer)
        self.connection.finish()


def routes(dispatcher: Dispatcher) -> list[Any]:
    args = {"dispatcher": dispatcher}
    return [Rule(_SmallBody(r"/jsonrpc$"), JSONRPCHandler, args),
            (r"/jsonrpc", StreamingJSONRPCHandler, args)]
