"""IceProd 2.3.2's JSON-RPC client library as the scripts written for it use it, over real
HTTP: ``JSONRPC(address, timeout=None, passkey=None)``, then ``rpc.method(*args,
**kwargs)``.

What it sends and how it reads the answers, written out from its wire behaviour:

- it opens by calling ``echo`` with params ``{"value": "e", "passkey": KEY}`` and raises
  unless the result is ``"e"``;
- every call is one JSON-RPC 2.0 request whose params are an object: the named arguments,
  ``passkey`` added unless the caller passed one (``null`` without a key), and the
  positional arguments as a list under ``args``;
- an answer holding ``error`` raises ``Exception('Error %r' % error)``; one holding
  ``result`` returns it; an empty body returns None;
- a connection error is tried again after a random 2i to 30(i+1) seconds, up to its retry
  count (tests use few, since a server that is not there is a failure anyway).

It posts with ``Content-Type: application/json-rpc`` and no other credential, as IceProd
2.3 pilots do (tests/compat/iceprod2.py).
"""

from __future__ import annotations

import ast
import http.client
import itertools
import json
import random
import time
from typing import Any
from urllib.parse import urlsplit

_ids = itertools.count(1)


class JSONRPC:
    def __init__(self, address: str, timeout: float | None = None,
                 passkey: str | None = None, retries: int = 2) -> None:
        self._address = address
        self._timeout = timeout or 60.0
        self._passkey = passkey
        self._retries = retries
        if self.echo(value="e") != "e":
            raise Exception("JSONRPC: the server did not echo")

    def request(self, method: str, params: dict[str, Any]) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params,
                           "id": next(_ids)}).encode()
        for attempt in range(self._retries + 1):
            try:
                status, data = self._post(body)
                break
            except OSError:
                if attempt >= self._retries:
                    raise
                time.sleep(random.uniform(2 * attempt, 30 * (attempt + 1)))
        if status >= 400:
            raise Exception(f"HTTP error {status}: {data[:200]!r}")
        if not data:
            return None
        answer = json.loads(data)
        if "error" in answer:
            raise Exception(f"Error {answer['error']!r}")
        return answer.get("result")

    def _post(self, body: bytes) -> tuple[int, bytes]:
        parts = urlsplit(self._address)
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port,
                                          timeout=self._timeout)
        try:
            conn.request("POST", parts.path or "/", body,
                         {"Content-Type": "application/json-rpc"})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Method(self, name)


class _Method:
    def __init__(self, rpc: JSONRPC, name: str) -> None:
        self._rpc = rpc
        self._name = name

    def __getattr__(self, name: str) -> _Method:
        return _Method(self._rpc, f"{self._name}.{name}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if "passkey" not in kwargs:
            kwargs["passkey"] = self._rpc._passkey
        if args and "args" not in kwargs:
            kwargs["args"] = list(args)
        return self._rpc.request(self._name, kwargs)


def error_of(exc: BaseException) -> dict[str, Any]:
    """The JSON-RPC error object a 2.3.2 script sees in the text of the exception."""
    text = str(exc)
    assert text.startswith("Error {"), text
    error: dict[str, Any] = ast.literal_eval(text[len("Error "):])
    return error


def refused(fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Call ``fn`` (a method of :class:`JSONRPC`) and require the exception the 2.3.2
    library raises for an error answer; returns the error object."""
    try:
        result = fn(*args, **kwargs)
    except Exception as e:  # what a 2.3.2 script catches
        return error_of(e)
    raise AssertionError(f"expected an error, got the result {result!r}")
