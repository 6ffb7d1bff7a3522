"""Raw JSON-RPC over HTTP, byte for byte, for tests of the transport itself.

Everything else uses :class:`iceprod_server.client.IceProdClient`; this module exists so a
test can send what no well-behaved client would (broken JSON, odd content types, oversized
bodies) and see exactly what came back.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest

from iceprod_server.client import RPCError


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        assert self.body, f"empty body (HTTP {self.status})"
        return json.loads(self.body)


def post(url: str, body: bytes | str, content_type: str | None = "application/json",
         headers: dict[str, str] | None = None, method: str = "POST",
         timeout: float = 30.0) -> Answer:
    """Send ``body`` as it is to ``url`` (the server's ``/jsonrpc`` URL)."""
    parts = urlsplit(url)
    data = body.encode() if isinstance(body, str) else body
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port,
                                      timeout=timeout)
    all_headers = {"Content-Length": str(len(data))} if method != "GET" else {}
    if content_type:
        all_headers["Content-Type"] = content_type
    all_headers.update(headers or {})
    try:
        conn.putrequest(method, parts.path or "/")
        for k, v in all_headers.items():
            conn.putheader(k, v)
        conn.endheaders()
        if method != "GET":
            try:
                conn.send(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered (413) before reading everything: read the answer
        resp = conn.getresponse()
        return Answer(resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()})
    finally:
        conn.close()


def request(url: str, method: str, params: Any = None, id: Any = 1,
            passkey: str | None = None, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """One JSON-RPC request; returns the whole response object (result or error)."""
    req: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": id}
    if params is not None:
        req["params"] = params
    all_headers = dict(headers or {})
    if passkey:
        all_headers["Authorization"] = f"Bearer {passkey}"
    answer = post(url, json.dumps(req), headers=all_headers)
    assert answer.status == 200, f"HTTP {answer.status}: {answer.body[:500]!r}"
    response: dict[str, Any] = answer.json()
    return response


def error_code(response: dict[str, Any]) -> int | None:
    """The error code of a response object, or None when it holds a result."""
    if "error" in response:
        return int(response["error"]["code"])
    return None


def expect_error(code: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> RPCError:
    """Call ``fn`` (a client method) and require it to fail with ``code``."""
    with pytest.raises(RPCError) as caught:
        result = fn(*args, **kwargs)
        pytest.fail(f"expected error {code}, got the result {result!r}")
    assert caught.value.code == code, (
        f"expected error {code}, got {caught.value.code}: {caught.value.message} "
        f"data={caught.value.data!r}")
    return caught.value
