"""The caching file proxy: ``POST /download`` (IceProd's form) and ``GET /proxy``.

Both take ``url``, ``type`` (``download``, ``size`` or ``checksum``) and ``cache``; the
handlers check the input, the caller (``[proxy] access``) and the allow list, then hand
the work to the fetcher and the cache in :mod:`iceprod_server.files`. See docs/proxy.md.

A download is written to the caller as it arrives. Every chunk is flushed to the
connection; once more than :data:`HIGH_WATER` bytes are waiting to be sent, ``send``
returns the flush, and the source is not read again until the caller has taken them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import tornado.http1connection
import tornado.web

from iceprod_server import metrics
from iceprod_server.files.allow import AllowList, Refused, Target
from iceprod_server.files.cache import Cache, ClientGone
from iceprod_server.files.fetch import Fetcher, SourceError
from iceprod_server.handlers.base import FileAccessHandler
from iceprod_server.services import Services

log = logging.getLogger(__name__)

TYPES = ("download", "size", "checksum")
# bytes written to a caller and not yet taken by its socket, before the source waits
HIGH_WATER = 1024 * 1024
GRACE_SECONDS = 10.0
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class ProxyRequest:
    url: str
    type: str
    cache: bool


def proxy_request(fields: dict[str, Any]) -> ProxyRequest:
    """Check the caller's fields; HTTP 400 with the reason when they are wrong."""
    url = fields.get("url")
    if not isinstance(url, str) or not url.strip():
        raise tornado.web.HTTPError(400, "url is required (a string)")
    kind = fields.get("type", "download")
    if kind not in TYPES:
        raise tornado.web.HTTPError(400, "type must be one of %s, got %r",
                                    ", ".join(TYPES), kind)
    cache = fields.get("cache", False)
    if isinstance(cache, str) and cache.strip().lower() in _TRUE + _FALSE:
        cache = cache.strip().lower() in _TRUE
    elif isinstance(cache, int) and not isinstance(cache, bool) and cache in (0, 1):
        cache = bool(cache)
    if not isinstance(cache, bool):
        raise tornado.web.HTTPError(400, "cache must be true or false, got %r", cache)
    return ProxyRequest(url.strip(), kind, cache)


class ProxyState:
    """What the proxy keeps between requests, made on its first request (the cache index
    is read from disk then)."""

    def __init__(self) -> None:
        self._setup: asyncio.Future[tuple[AllowList, Fetcher, Cache]] | None = None

    async def get(self, services: Services) -> tuple[AllowList, Fetcher, Cache]:
        if self._setup is None or (self._setup.done() and self._setup.exception()):
            self._setup = asyncio.ensure_future(self._make(services))
        return await asyncio.shield(self._setup)

    @staticmethod
    async def _make(services: Services) -> tuple[AllowList, Fetcher, Cache]:
        config = services.config
        allow = AllowList(config.proxy_allow)

        def gridftp() -> Any:
            return services.gsiftp

        fetcher = Fetcher(allow, config.proxy_connect_timeout, config.proxy_timeout,
                          gridftp, services.run_fs)
        cache = Cache(config.cache_dir, config.proxy_cache_max_bytes,
                      config.proxy_cache_reserve_bytes, services.run_fs)
        await cache.start()
        return allow, fetcher, cache


class _ProxyHandler(FileAccessHandler):
    """Answers one proxy request; it is also the :class:`~iceprod_server.files.cache.Reader`
    the fetcher and the cache stream to."""

    def initialize(self, state: ProxyState) -> None:
        self.state = state
        self.started = False
        self.gone = False
        self.queued = 0

    def compute_etag(self) -> str | None:
        return None

    def on_connection_close(self) -> None:
        self.gone = True
        super().on_connection_close()

    async def answer(self, request: ProxyRequest) -> None:
        config = self.services.config
        await self.authorize(config.proxy_access)
        allow, fetcher, cache = await self.state.get(self.services)
        try:
            target = allow.check(request.url)
        except Refused as e:
            raise tornado.web.HTTPError(403, "%s", e) from None
        try:
            # a little past the fetch's own timeout, which should end it first; this one
            # ends what else may hang, like a caller that stopped reading a cached file
            async with asyncio.timeout(config.proxy_timeout + GRACE_SECONDS):
                if request.type == "size":
                    await self.answer_size(request, target, fetcher, cache)
                elif request.type == "checksum":
                    await self.answer_checksum(request, target, fetcher, cache)
                elif request.cache:
                    fill = cache.fill(target.url, lambda on_start, on_chunk: fetcher.stream(
                        target, on_start, on_chunk))
                    await fill.serve(self)
                else:
                    await fetcher.stream(target, lambda size: self.start(size, None),
                                         self.send)
        except SourceError as e:
            self.fail(e.status, e.message)
        except TimeoutError:
            self.fail(504, f"{target.url}: timed out (proxy_timeout is "
                           f"{config.proxy_timeout:g} s)")
        except ClientGone:
            self.abort()
        except Exception:
            log.exception("proxy request for %s failed", target.url)
            self.fail(500, f"{target.url}: the proxy failed (the server's log says why)")

    async def answer_size(self, request: ProxyRequest, target: Target, fetcher: Fetcher,
                          cache: Cache) -> None:
        entry = await cache.lookup(target.url) if request.cache else None
        size = entry.size if entry is not None else await fetcher.size(target)
        self.finish({"url": request.url, "size": size})

    async def answer_checksum(self, request: ProxyRequest, target: Target,
                              fetcher: Fetcher, cache: Cache) -> None:
        entry = await cache.lookup(target.url) if request.cache else None
        if entry is not None:
            checksum = entry.sha512
        elif request.cache and target.scheme in ("http", "https"):
            # hashing an http file means reading it all: keep it while at it
            fill = cache.fill(target.url, lambda on_start, on_chunk: fetcher.stream(
                target, on_start, on_chunk))
            _, checksum = await fill.result()
        else:
            checksum = await fetcher.checksum(target)
        self.finish({"url": request.url, "checksum": checksum, "type": "sha512"})

    # -- the Reader side ------------------------------------------------------------------

    def start(self, size: int | None, sha512: str | None) -> None:
        if self.gone:
            raise ClientGone("the caller went away")
        self.started = True
        self.set_header("Content-Type", "application/octet-stream")
        # whatever the file holds, a browser must never run it as a page of this site
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", "default-src 'none'; sandbox")
        if size is not None:
            self.set_header("Content-Length", str(size))
        if sha512:
            self.set_header("X-Checksum-Sha512", sha512)

    def send(self, chunk: bytes) -> Awaitable[None] | None:
        if self.gone:
            raise ClientGone("the caller went away")
        self.write(chunk)
        metrics.PROXY_BYTES.inc(len(chunk))
        flushed = self.flush()
        self.queued += len(chunk)
        if self.queued < HIGH_WATER:
            return None
        # Tornado resolves only the latest flush's future: waiting for it means everything
        # written so far has reached the socket
        self.queued = 0
        return flushed

    # -- endings --------------------------------------------------------------------------

    def fail(self, status: int, message: str) -> None:
        if not self.started:
            raise tornado.web.HTTPError(status, "%s", message)
        # the status line went out long ago: cut the connection, so the caller sees a
        # body shorter than Content-Length (or an unterminated chunked body)
        log.warning("proxy download broken off after the headers: %s", message)
        self.abort()

    def abort(self) -> None:
        connection = self.request.connection
        if isinstance(connection, tornado.http1connection.HTTP1Connection):
            connection.close()
        if not self._finished:
            self.finish()


class DownloadHandler(_ProxyHandler):
    """``POST /download`` with ``{url, type, cache}`` as JSON or form fields."""

    async def post(self) -> None:
        content_type = self.request.headers.get("Content-Type", "")
        # a JSON object is taken as JSON whatever the Content-Type says (curl -d sends
        # JSON as form-encoded)
        looks_json = self.request.body.lstrip()[:1] in (b"{", b"[", b"")
        if content_type.startswith(("application/x-www-form-urlencoded",
                                    "multipart/form-data")) and not looks_json:
            fields: Any = {k: self.get_body_argument(k) for k in self.request.body_arguments}
        else:
            try:
                fields = json.loads(self.request.body or b"null")
            except ValueError as e:
                raise tornado.web.HTTPError(400, "the body is not valid JSON: %s", e) from None
            if not isinstance(fields, dict):
                raise tornado.web.HTTPError(400, "the body must be a JSON object "
                                                 "{url, type, cache}")
        await self.answer(proxy_request(fields))


class ProxyHandler(_ProxyHandler):
    """``GET /proxy?url=...&type=...&cache=1``."""

    async def get(self) -> None:
        fields = {k: self.get_query_argument(k) for k in self.request.query_arguments}
        await self.answer(proxy_request(fields))


def routes() -> list[tuple[str, type, dict[str, Any]]]:
    state = ProxyState()
    return [(r"/download", DownloadHandler, {"state": state}),
            (r"/proxy", ProxyHandler, {"state": state})]
