"""``POST /jsonrpc``: the one JSON-RPC endpoint for humans, pilots and sites.

The body is read in a streaming handler so that an oversized request is refused with 413
as soon as its size is known, without buffering it. Every JSON-RPC response, errors
included, is HTTP 200; notifications get 200 with an empty body.
"""

from __future__ import annotations

import tornado.web

from iceprod_server.handlers.base import BaseHandler
from iceprod_server.rpc.context import Caller
from iceprod_server.rpc.dispatcher import Dispatcher


@tornado.web.stream_request_body
class JSONRPCHandler(BaseHandler):
    def initialize(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.chunks: list[bytes] = []
        self.received = 0
        self.too_large = False

    def check_xsrf_cookie(self) -> None:
        # passkey callers carry no cookie: the token is checked in prepare, and only for
        # callers that a login cookie authenticates
        pass

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
        if self.bearer_token() is None:
            await super().prepare()
            if self.caller.role is not None:
                # a browser session: the page must prove it is ours (XSRF token header)
                tornado.web.RequestHandler.check_xsrf_cookie(self)

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
        remote_ip = self.remote_ip()

        async def authenticate(passkey: str | None, site_id: str | None) -> Caller:
            caller = await self.caller_from_request(passkey, site_id)
            self.caller = caller  # for the access log's role
            return caller

        answer = await self.dispatcher.handle_body(body, authenticate, remote_ip)
        self.set_status(200)
        if answer is None:
            self.finish()
            return
        self.set_header("Content-Type", "application/json")
        self.finish(answer)


def routes(dispatcher: Dispatcher) -> list[tuple[str, type, dict[str, object]]]:
    return [(r"/jsonrpc", JSONRPCHandler, {"dispatcher": dispatcher})]
