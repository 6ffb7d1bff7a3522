"""The HTTP server in front of the application, with the limits that keep it answering.

Tornado closes a connection whose headers exceed its ``max_header_size`` without a word.
Here the server reads up to :data:`HEADER_READ_BYTES` of headers, and a request whose
headers are over :data:`MAX_HEADER_BYTES` is answered ``431 Request Header Fields Too
Large`` (and the connection closed) before the application sees it. Connections that take
longer than ``idle_connection_timeout`` to send their headers (or sit idle between
requests), or longer than ``body_timeout`` to send a body, are closed.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import tornado.httpserver
import tornado.web
from tornado import httputil

from iceprod_server.config import Config

# (start line, headers, connection) -> a delegate that answers the request without the
# application, or None
Shortcut = Callable[[httputil.RequestStartLine, httputil.HTTPHeaders, httputil.HTTPConnection],
                    httputil.HTTPMessageDelegate | None]

MAX_HEADER_BYTES = 64 * 1024
# what Tornado reads before it gives up on a request without answering
HEADER_READ_BYTES = 1024 * 1024


def header_bytes(start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders) -> int:
    size = len(start_line.method) + len(start_line.path) + len(start_line.version) + 4
    for name, value in headers.get_all():
        size += len(name) + len(value) + 4
    return size


class _TooLarge(httputil.HTTPMessageDelegate):
    """Answers 431 and ignores the rest of the request."""

    def __init__(self, connection: httputil.HTTPConnection, size: int) -> None:
        self.connection = connection
        self.size = size

    def answer(self) -> None:
        body = json.dumps({"status": 431, "error": f"request headers of {self.size} bytes; "
                           f"at most {MAX_HEADER_BYTES} are accepted"}).encode()
        headers = httputil.HTTPHeaders({"Content-Type": "application/json",
                                        "Content-Length": str(len(body)),
                                        "Connection": "close"})
        self.connection.write_headers(
            httputil.ResponseStartLine("HTTP/1.1", 431, "Request Header Fields Too Large"),
            headers, body)
        self.connection.finish()

    def data_received(self, chunk: bytes) -> None:
        pass

    def finish(self) -> None:
        pass


class _Guard(httputil.HTTPMessageDelegate):
    def __init__(self, app: tornado.web.Application, shortcut: Shortcut | None,
                 server_conn: object, connection: httputil.HTTPConnection) -> None:
        self.app = app
        self.shortcut = shortcut
        self.server_conn = server_conn
        self.connection = connection
        self.inner: httputil.HTTPMessageDelegate | None = None

    def headers_received(self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
                         headers: httputil.HTTPHeaders) -> Awaitable[None] | None:
        assert isinstance(start_line, httputil.RequestStartLine)
        size = header_bytes(start_line, headers)
        if size > MAX_HEADER_BYTES:
            refusal = _TooLarge(self.connection, size)
            self.inner = refusal
            refusal.answer()
            return None
        inner = None
        if self.shortcut is not None:
            inner = self.shortcut(start_line, headers, self.connection)
        if inner is None:
            inner = self.app.start_request(self.server_conn, self.connection)
        self.inner = inner
        return inner.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        assert self.inner is not None
        return self.inner.data_received(chunk)

    def finish(self) -> None:
        if self.inner is not None:
            self.inner.finish()

    def on_connection_close(self) -> None:
        if self.inner is not None:
            self.inner.on_connection_close()


class GuardedApplication(httputil.HTTPServerConnectionDelegate):
    """``app`` behind the header limit; requests that ``shortcut`` takes bypass ``app``."""

    def __init__(self, app: tornado.web.Application, shortcut: Shortcut | None = None) -> None:
        self.app = app
        self.shortcut = shortcut

    def start_request(self, server_conn: object,
                      request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        return _Guard(self.app, self.shortcut, server_conn, request_conn)

    def on_close(self, server_conn: object) -> None:
        self.app.on_close(server_conn)


def http_server(app: tornado.web.Application, config: Config,
                shortcut: Shortcut | None = None) -> tornado.httpserver.HTTPServer:
    # Tornado's own body cap sits above ours so the JSON-RPC handler can answer 413 itself.
    # No xheaders: Tornado would take X-Real-IP from any client; the handlers trust proxy
    # headers only when the TCP peer is the configured trusted_proxy.
    return tornado.httpserver.HTTPServer(
        GuardedApplication(app, shortcut),
        max_body_size=max(config.max_body_bytes + 1, 100 * 1024 * 1024),
        max_header_size=HEADER_READ_BYTES,
        idle_connection_timeout=config.idle_connection_timeout,
        body_timeout=config.body_timeout)
