"""Where the file proxy gets files: http and https through Tornado's HTTP client, ftp and
gsiftp through the GridFTP client.

Every source hands the file over the same way: ``on_start(size)`` once, when the source has
answered and the body begins (``size`` is None when the source does not say), then
``on_chunk(chunk)`` for each piece as it arrives. When ``on_chunk`` returns an awaitable,
the source reads nothing more until it completes: that is the proxy's flow control, and
why a slow caller never makes the server hold more than a few chunks of a file.

For http, Tornado's ``simple_httpclient`` gives this since Tornado 6.6: its connection
returns what the ``streaming_callback`` returns from ``data_received``, and
``HTTP1Connection`` awaits it before it reads the next chunk from the socket. The client
is created as :class:`~tornado.simple_httpclient.SimpleAsyncHTTPClient` explicitly (the
curl client does not wait), with a body limit high enough for any file (its default caps
bodies at 100 MB even when they are streamed).

Redirects are followed here, not by Tornado, so that every ``Location`` is checked against
the allow list before it is fetched.

Failures raise :class:`SourceError` with the HTTP status the proxy answers with: 404 when
the source has no such file, 403 for a redirect out of the allow list, 504 for a timeout,
502 for anything else.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urljoin

import tornado.httpclient
import tornado.httputil
import tornado.simple_httpclient

from iceprod_server import gsiftp
from iceprod_server.files.allow import AllowList, Refused, Target

log = logging.getLogger(__name__)

OnStart = Callable[[int | None], None]
OnChunk = Callable[[bytes], Awaitable[Any] | None]

MAX_REDIRECTS = 5
REDIRECT_CODES = (301, 302, 303, 307, 308)
# simultaneous upstream connections of one server process; more wait in Tornado's queue
MAX_CLIENTS = 256
# a body limit no file reaches: the proxy streams, so nothing is held in memory
MAX_BODY = 1 << 50
USER_AGENT = "iceprod-server file proxy"
MAX_DISCARD = 64 * 1024


class SourceError(Exception):
    """A fetch failed; ``status`` is the HTTP code the proxy answers with."""

    def __init__(self, status: int, message: str, upstream_code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.upstream_code = upstream_code


class _Stop(tornado.httputil.HTTPInputError):
    """Raised into Tornado's client to end a transfer early. Tornado lets this exception
    type through quietly (an INFO line), closes the connection, and the fetch resolves."""


class _Exchange:
    """One HTTP request and its answer, seen through the client's callbacks."""

    def __init__(self, on_start: OnStart, on_chunk: OnChunk) -> None:
        self.on_start = on_start
        self.on_chunk = on_chunk
        self.code: int | None = None
        self.reason = ""
        self.headers = tornado.httputil.HTTPHeaders()
        self.failure: BaseException | None = None
        self.discarded = 0
        self._in_headers = False

    def header_line(self, line: str) -> None:
        if not self._in_headers:
            start = tornado.httputil.parse_response_start_line(line.strip())
            self.code, self.reason = start.code, start.reason
            self.headers = tornado.httputil.HTTPHeaders()
            self._in_headers = True
        elif line.strip():
            self.headers.parse_line(line)
        else:
            # the end of one header block; a 1xx answer is followed by another
            self._in_headers = False
            if self.code == 200:
                try:
                    self.on_start(self.content_length())
                except Exception as e:
                    self.failure = e
                    raise _Stop("the proxy stopped the transfer") from e

    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length", "")
        return int(value) if value.isdigit() else None

    def chunk(self, data: bytes) -> Awaitable[None] | None:
        if self.code != 200:
            # the body of an error or a redirect is dropped; a long one is cut short
            self.discarded += len(data)
            if self.discarded > MAX_DISCARD:
                raise _Stop("the body of an error or redirect is not needed")
            return None
        try:
            waiting = self.on_chunk(data)
        except Exception as e:
            self.failure = e
            raise _Stop("the proxy stopped the transfer") from e
        return None if waiting is None else self._wait(waiting)

    async def _wait(self, waiting: Awaitable[Any]) -> None:
        try:
            await waiting
        except Exception as e:
            self.failure = e
            raise _Stop("the proxy stopped the transfer") from e


class Fetcher:
    """Streams, sizes and checksums files from the allowed sources."""

    def __init__(self, allow: AllowList, connect_timeout: float, timeout: float,
                 gridftp: Callable[[], gsiftp.GridFTPClient],
                 run_fs: Callable[..., Awaitable[Any]]) -> None:
        self.allow = allow
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._gridftp = gridftp
        self._run_fs = run_fs
        self._http = tornado.simple_httpclient.SimpleAsyncHTTPClient(
            force_instance=True, max_clients=MAX_CLIENTS, max_body_size=MAX_BODY)

    def close(self) -> None:
        self._http.close()

    async def stream(self, target: Target, on_start: OnStart, on_chunk: OnChunk) -> None:
        """Fetch ``target``, handing it to ``on_start`` and ``on_chunk``."""
        if target.scheme in ("http", "https"):
            await self._http_fetch(target, "GET", on_start, on_chunk)
        else:
            await self._gridftp_get(target, on_start, on_chunk)

    async def size(self, target: Target) -> int:
        if target.scheme not in ("http", "https"):
            return int(await self._gridftp_call(target, lambda client: client.size(
                target.url, timeout=self.timeout)))
        sizes: list[int | None] = []
        try:
            await self._http_fetch(target, "HEAD", sizes.append, lambda chunk: None)
        except SourceError as e:
            if e.upstream_code not in (405, 501):
                raise
        if sizes and sizes[0] is not None:
            return sizes[0]
        # no length from HEAD: count the body
        counted = [0]

        def count(chunk: bytes) -> None:
            counted[0] += len(chunk)

        await self._http_fetch(target, "GET", lambda size: None, count)
        return counted[0]

    async def checksum(self, target: Target) -> str:
        """The SHA-512 of ``target``: the GridFTP server's CKSM where it offers one, else
        the stream hashed on the ``fs`` pool (hashlib releases the GIL there)."""
        if target.scheme not in ("http", "https"):
            return str(await self._gridftp_call(target, lambda client: client.checksum(
                target.url, "sha512", timeout=self.timeout)))
        hasher = hashlib.sha512()
        await self.stream(target, lambda size: None,
                          lambda chunk: self._run_fs(hasher.update, chunk))
        return hasher.hexdigest()

    # -- http -----------------------------------------------------------------------------

    async def _http_fetch(self, target: Target, method: str, on_start: OnStart,
                          on_chunk: OnChunk) -> None:
        deadline = time.monotonic() + self.timeout
        for _ in range(MAX_REDIRECTS + 1):
            exchange = _Exchange(on_start, on_chunk)
            request = tornado.httpclient.HTTPRequest(
                target.url, method=method, follow_redirects=False,
                decompress_response=False, headers={"Accept-Encoding": "identity"},
                connect_timeout=self.connect_timeout,
                request_timeout=max(0.001, deadline - time.monotonic()),
                header_callback=exchange.header_line, streaming_callback=exchange.chunk,
                user_agent=USER_AGENT)
            error: BaseException | None
            try:
                # raise_error=False still raises for anything but an HTTP status
                error = (await self._http.fetch(request, raise_error=False)).error
            except Exception as e:
                error = e
            if exchange.failure is not None:
                raise exchange.failure
            code = exchange.code
            if code is None or (code == 200 and error is not None):
                raise _transport_error(target, error)
            if code in REDIRECT_CODES:
                target = self._redirect(target, exchange.headers.get("Location"), code)
                continue
            if code in (404, 410):
                raise SourceError(404, f"{target.url}: no such file (the source answered "
                                       f"{code} {exchange.reason})", code)
            if code != 200:
                raise SourceError(502, f"{target.url}: the source answered {code} "
                                       f"{exchange.reason}", code)
            return
        raise SourceError(502, f"{target.url}: more than {MAX_REDIRECTS} redirects")

    def _redirect(self, target: Target, location: str | None, code: int) -> Target:
        if not location:
            raise SourceError(502, f"{target.url}: redirect {code} without a Location", code)
        url = urljoin(target.url, location)
        try:
            new = self.allow.check(url)
        except Refused as e:
            raise SourceError(403, f"{target.url} redirects to {url}, which is refused: "
                                   f"{e}", code) from None
        if new.scheme not in ("http", "https"):
            raise SourceError(502, f"{target.url} redirects to {url}, which is not http(s)",
                              code)
        log.debug("following redirect %s -> %s", target.url, new.url)
        return new

    # -- ftp and gsiftp -------------------------------------------------------------------

    async def _gridftp_get(self, target: Target, on_start: OnStart,
                           on_chunk: OnChunk) -> None:
        size = int(await self._gridftp_call(target, lambda client: client.size(
            target.url, timeout=self.timeout)))
        on_start(size)
        received = 0
        failure: list[BaseException] = []

        async def forward(chunk: bytes) -> None:
            nonlocal received
            received += len(chunk)
            try:
                waiting = on_chunk(chunk)
                if waiting is not None:
                    await waiting
            except Exception as e:
                failure.append(e)
                raise

        try:
            await self._gridftp_call(target, lambda client: client.get(
                target.url, callback=forward, timeout=self.timeout))
        except SourceError:
            if failure:
                raise failure[0] from None
            raise
        if failure:
            raise failure[0]
        if received != size:
            raise SourceError(502, f"{target.url}: the source sent {received} of {size} "
                                   "bytes")

    async def _gridftp_call(self, target: Target,
                            call: Callable[[gsiftp.GridFTPClient], Awaitable[Any]]) -> Any:
        try:
            return await call(self._gridftp())
        except gsiftp.NotFoundError as e:
            raise SourceError(404, f"{target.url}: no such file ({e.detail})") from e
        except gsiftp.TimeoutError as e:
            raise SourceError(504, f"{target.url}: timed out ({e.detail})") from e
        except gsiftp.GridFTPError as e:
            raise SourceError(502, f"{target.url}: {type(e).__name__}: {e.detail}") from e
        except (OSError, ValueError, ImportError) as e:
            raise SourceError(502, f"{target.url}: {e}") from e


def _transport_error(target: Target, error: BaseException | None) -> SourceError:
    if isinstance(error, tornado.simple_httpclient.HTTPTimeoutError):
        return SourceError(504, f"{target.url}: timed out ({error})")
    if isinstance(error, ssl.SSLCertVerificationError):
        return SourceError(502, f"{target.url}: the source's TLS certificate was refused: "
                                f"{error.verify_message or error} (the server trusts the "
                                "authorities in SSL_CERT_FILE / SSL_CERT_DIR, else the "
                                "system's)")
    return SourceError(502, f"{target.url}: the fetch failed: {error or 'no answer'}")
