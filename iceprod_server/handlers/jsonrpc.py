"""``POST /jsonrpc``: the one JSON-RPC endpoint for humans, pilots and sites.

A body that says it is small (``Content-Length`` up to :data:`SMALL_BODY` bytes, which is
every pilot call) is read whole by Tornado before the handler runs: no streaming, no
chunk list. Any other body is read in a streaming handler so that an oversized request
is refused with 413 as soon as its size is known, without buffering it. Every JSON-RPC
response, errors included, is HTTP 200; notifications get 200 with an empty body.
Responses too small to gain from compression skip the gzip transform.
"""

from __future__ import annotations

from typing import Any

import tornado.web
from tornado.httputil import HTTPServerRequest
from tornado.routing import PathMatches, Rule

from iceprod_server.handlers.base import BaseHandler
from iceprod_server.rpc.context import Caller
from iceprod_server.rpc.dispatcher import Dispatcher

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
        if answer is None:
            self.finish()
            return
        if len(answer) < COMPRESS_FROM:
            self._transforms = []
        self.set_header("Content-Type", "application/json")
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


def routes(dispatcher: Dispatcher) -> list[Any]:
    args = {"dispatcher": dispatcher}
    return [Rule(_SmallBody(r"/jsonrpc$"), JSONRPCHandler, args),
            (r"/jsonrpc", StreamingJSONRPCHandler, args)]
