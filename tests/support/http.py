"""Plain HTTP calls to a server under test, with nothing in between that could tidy them up.

- :func:`fetch`: one request on a fresh ``http.client`` connection; the path goes out
  exactly as given (no normalisation of ``..`` or escapes), so traversal attempts reach
  the server as a hostile client would send them. Its answer is a :class:`Reply`.
- :func:`request_head`: the head of a request as bytes, for tests that write on a raw
  socket because they send only part of a body, read slowly, or hang up.
- :class:`BrowserSession`: a logged-in browser by hand (session and XSRF cookies).
- :func:`sha512`: the digest that an ``X-Checksum: sha512=...`` header carries.
"""

from __future__ import annotations

import hashlib
import http.client
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from tests.support.servers import PASSWORD


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def fetch(port: int, method: str, path: str, body: bytes | Iterable[bytes] | None = None,
          headers: dict[str, str] | None = None, key: str | None = None,
          host: str = "127.0.0.1", source: str | None = None,
          timeout: float = 60.0) -> Reply:
    """One request on a fresh connection; ``path`` is sent exactly as given, ``key`` is a
    passkey sent as a bearer token, ``source`` picks the client's own address. A body
    given as an iterable goes out chunked unless ``headers`` announce its length."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout,
                                      source_address=(source, 0) if source else None)
    all_headers = dict(headers or {})
    if key:
        all_headers["Authorization"] = f"Bearer {key}"
    try:
        conn.request(method, path, body=body, headers=all_headers,
                     encode_chunked=not isinstance(body, bytes | None)
                     and "Content-Length" not in all_headers)
        resp = conn.getresponse()
        return Reply(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def request_head(method: str, path: str, headers: dict[str, str] | None = None,
                 key: str | None = None, host: str = "x") -> bytes:
    """``METHOD path HTTP/1.1``, ``Host``, the passkey as a bearer token, then ``headers``,
    and the empty line that ends the head."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    if key:
        lines.append(f"Authorization: Bearer {key}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def sha512(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()


class BrowserSession:
    """A logged-in browser, by hand: the session cookie and the XSRF cookie."""

    def __init__(self, port: int, username: str) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}
        form = urlencode({"username": username, "password": PASSWORD}).encode()
        self.request("POST", "/login", form,
                     {"Content-Type": "application/x-www-form-urlencoded"})
        assert "iceprod_session" in self.cookies, "the login did not set a session cookie"
        self.request("GET", "/login")
        assert "_xsrf" in self.cookies

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Reply:
        cookie = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        reply = fetch(self.port, method, path, body,
                      {**(headers or {}), **({"Cookie": cookie} if cookie else {})})
        for header in reply.headers.get_all("Set-Cookie") or []:
            name, _, rest = header.partition("=")
            self.cookies[name.strip()] = rest.split(";", 1)[0].strip('"')
        return reply
