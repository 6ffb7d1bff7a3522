"""The file proxy's side of the tests: a real upstream to fetch from, and calls to the proxy.

- :class:`Upstream`: a small Tornado server in a thread of the test process that serves
  files from memory under ``/pub/<mode>/<name>`` (``file``, ``slow``, ``broken`` off
  half-way, ``chunked`` without a length), ``/pub/big/<size>`` of any size, and
  ``/pub/hang``, ``/pub/error`` and ``/pub/redirect``; it counts requests, and the bytes
  its socket has taken, so a test sees what the proxy fetched and how far ahead it read.
- :func:`post` and :func:`get`: ``POST /download`` and ``GET /proxy`` on a server under
  test, for any source (this upstream or a GridFTP server);
- :func:`cache_entries` and :func:`cache_temps`: what the proxy's cache holds on disk.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import threading
import time
import urllib.parse
from collections import Counter
from typing import Any

import tornado.web

from tests.support.http import Reply, fetch
from tests.support.servers import ServerProcess, unused_port

CHUNK = 64 * 1024


# -- the upstream ----------------------------------------------------------------------------

class Upstream:
    """Files served from memory under ``/pub/<mode>/<name>`` (and ``/secret/<name>``,
    which is not in the proxy's allow list); ``hits`` counts requests by method and path,
    ``sent`` the bytes of ``/pub/big/...`` answers that the socket has taken. With
    ``ssl_options`` it serves https instead of http."""

    def __init__(self, ssl_options: ssl.SSLContext | None = None) -> None:
        self.port = unused_port()
        self.ssl_options = ssl_options
        self.files: dict[str, bytes] = {}
        self.hits: Counter[tuple[str, str]] = Counter()
        self.sent: Counter[str] = Counter()
        # bytes a /pub/big/ answer had sent when it ended (done, or the caller went away)
        self.ended: dict[str, int] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    @property
    def base(self) -> str:
        scheme = "http" if self.ssl_options is None else "https"
        return f"{scheme}://127.0.0.1:{self.port}"

    def url(self, mode: str, name: str = "") -> str:
        return f"{self.base}/pub/{mode}/{name}" if name else f"{self.base}/pub/{mode}"

    def add(self, name: str, size: int) -> bytes:
        data = os.urandom(size)
        self.files[name] = data
        return data

    def gets(self, url: str) -> int:
        return self.hits["GET", urllib.parse.urlsplit(url).path]

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10), "the upstream did not start"

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _main(self) -> None:
        app = tornado.web.Application([
            (r"/pub/(file|slow|broken|chunked)/(.+)", FileHandler),
            (r"/pub/big/(\d+)", BigHandler),
            (r"/pub/hang", HangHandler),
            (r"/pub/error", ErrorHandler),
            (r"/pub/redirect", RedirectHandler),
            (r"/secret/(.+)", SecretHandler),
        ], upstream=self)
        server = app.listen(self.port, address="127.0.0.1", ssl_options=self.ssl_options)
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        server.stop()


class UpstreamHandler(tornado.web.RequestHandler):
    @property
    def up(self) -> Upstream:
        up: Upstream = self.settings["upstream"]
        return up

    def prepare(self) -> None:
        self.up.hits[self.request.method or "", self.request.path] += 1


class FileHandler(UpstreamHandler):
    def head(self, mode: str, name: str) -> None:
        if name not in self.up.files:
            raise tornado.web.HTTPError(404)
        self.set_header("Content-Length", len(self.up.files[name]))

    async def get(self, mode: str, name: str) -> None:
        data = self.up.files.get(name)
        if data is None:
            raise tornado.web.HTTPError(404)
        self.set_header("Content-Type", "application/octet-stream")
        if mode != "chunked":
            self.set_header("Content-Length", len(data))
        for start in range(0, len(data), CHUNK):
            if mode == "broken" and start >= len(data) // 2:
                self.request.connection.close()  # type: ignore[union-attr]
                return
            self.write(data[start:start + CHUNK])
            await self.flush()
            if mode == "slow":
                await asyncio.sleep(0.02)


class BigHandler(UpstreamHandler):
    async def get(self, size_text: str) -> None:
        size = int(size_text)
        block = bytes(range(256)) * 1024
        self.set_header("Content-Length", size)
        sent = 0
        try:
            while sent < size:
                piece = block[:size - sent]
                self.write(piece)
                await self.flush()
                sent += len(piece)
                self.up.sent[self.request.path] = sent
        finally:
            self.up.ended[self.request.path] = sent


class HangHandler(UpstreamHandler):
    async def get(self) -> None:
        await asyncio.sleep(30)


class ErrorHandler(UpstreamHandler):
    def get(self) -> None:
        raise tornado.web.HTTPError(500)


class RedirectHandler(UpstreamHandler):
    def get(self) -> None:
        self.redirect(self.get_query_argument("to"))


class SecretHandler(UpstreamHandler):
    def get(self, name: str) -> None:
        self.write(b"secret")


# -- calling the proxy -----------------------------------------------------------------------

def call(srv: ServerProcess, method: str, path: str, body: bytes | None = None,
         key: str | None = None, content_type: str = "application/json") -> Reply:
    headers = {"Content-Type": content_type} if body is not None else {}
    return fetch(srv.port, method, path, body, headers, key)


def post(srv: ServerProcess, key: str | None, **fields: Any) -> Reply:
    return call(srv, "POST", "/download", json.dumps(fields).encode(), key)


def get(srv: ServerProcess, key: str | None, url: str, **params: str) -> Reply:
    query = urllib.parse.urlencode({"url": url, **params})
    return call(srv, "GET", f"/proxy?{query}", key=key)


def cache_entries(srv: ServerProcess) -> dict[str, dict[str, Any]]:
    """The cache's metadata files, by URL, once no fill is in progress: a caller has its
    last byte a moment before the fill it came from is renamed into place."""
    deadline = time.monotonic() + 10
    while cache_temps(srv) and time.monotonic() < deadline:
        time.sleep(0.01)
    found = {}
    for meta in (srv.data_dir / "cache" / "entries").glob("*/*/meta.json"):
        info = json.loads(meta.read_text())
        found[info["url"]] = info
    return found


def cache_temps(srv: ServerProcess) -> list[str]:
    tmp = srv.data_dir / "cache" / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []
