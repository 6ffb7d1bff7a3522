"""``GET /download/<path>`` and ``PUT /upload/<path>``: files under ``<data-dir>/files``.

Downloads stream the file in chunks read on the ``fs`` pool, flushing each before the
next is sent, so memory does not grow with the file and a client that goes away stops
the reading. Uploads are written to a temporary file on the ``fs`` pool as they arrive;
Tornado reads no more of the body until the last batch is on its way to disk. Behind
nginx the body is already a file in ``files_nginx_upload_dir`` and is moved into place.
The blocking work is in :mod:`iceprod_server.files.storage`; docs/files.md describes the
behaviour seen from outside.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import os
import sys
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import tornado.iostream
import tornado.web
from tornado.httputil import format_timestamp

from iceprod_server.files import access, storage
from iceprod_server.handlers.base import FileAccessHandler

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
BATCH = 1024 * 1024

# cleanups that outlive their request (a client that went away); kept so none is lost
_cleanups: set[asyncio.Task[None]] = set()


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    task = asyncio.ensure_future(coro)
    _cleanups.add(task)
    task.add_done_callback(_cleaned)


def _cleaned(task: asyncio.Task[None]) -> None:
    _cleanups.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("upload cleanup failed", exc_info=task.exception())


@contextlib.contextmanager
def _http_errors() -> Iterator[None]:
    """Storage errors as the HTTP answers a client can act on."""
    try:
        yield
    except storage.BadPath as e:
        raise tornado.web.HTTPError(404, "no such file") from e
    except storage.NotAFile as e:
        raise tornado.web.HTTPError(409, "%s", e) from e
    except storage.Mismatch as e:
        raise tornado.web.HTTPError(400, "%s", e) from e
    except storage.TooLarge as e:
        raise tornado.web.HTTPError(413, "%s", e) from e
    except OSError as e:
        if storage.storage_full(e):
            raise tornado.web.HTTPError(507, "no space left for the file") from e
        raise


class FilesHandler(FileAccessHandler):
    """What downloads and uploads share: the path check and the access rules."""

    def checked_path(self, raw: str) -> str:
        """The path under the files directory, or 404 if it could lead outside it."""
        relpath = storage.normalize(raw)
        if relpath is None:
            raise tornado.web.HTTPError(404, "no such file")
        return relpath

    async def authorize_path(self, relpath: str, real_relpath: str | None = None) -> None:
        """Check the access rule of ``relpath`` and, if a symlink leads elsewhere, of
        where it leads too: a link must not open a stricter directory."""
        rules = self.services.config.files_access
        rule = access.rule_for(rules, relpath)
        await self.authorize(rule)
        if real_relpath is not None and access.rule_for(rules, real_relpath) != rule:
            await self.authorize(access.rule_for(rules, real_relpath))


class DownloadHandler(FilesHandler):
    SUPPORTED_METHODS = ("GET", "HEAD")

    async def prepare(self) -> None:
        # compress_response would gzip text files, dropping Content-Length and ranges
        self._transforms = []

    async def head(self, path: str) -> None:
        await self.get(path)

    async def get(self, path: str) -> None:
        relpath = self.checked_path(path)
        await self.authorize_path(relpath)
        run_fs = self.services.run_fs
        opened: storage.Opened | None = await run_fs(
            storage.open_for_read, self.services.config.files_dir, relpath)
        if opened is None:
            raise tornado.web.HTTPError(404, "no such file")
        try:
            await self.authorize_path(relpath, opened.real_relpath)
            await self.send(opened)
        finally:
            await run_fs(os.close, opened.fd)

    async def send(self, opened: storage.Opened) -> None:
        self.set_header("ETag", opened.etag)
        self.set_header("Last-Modified", format_timestamp(opened.mtime))
        self.set_header("Accept-Ranges", "bytes")
        self.set_header("Content-Type", opened.content_type)
        # whatever was uploaded must never run as a page of this site
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", "default-src 'none'; sandbox")
        if self.not_modified(opened):
            self.set_status(304)
            return
        try:
            span = self.wanted_range(opened)
        except storage.RangeNotSatisfiable:
            self.set_status(416)
            self.set_header("Content-Range", f"bytes */{opened.size}")
            self.finish({"status": 416, "error": "the range is outside the file"})
            return
        start, end = span or (0, opened.size)
        if span is not None:
            self.set_status(206)
            self.set_header("Content-Range", f"bytes {start}-{end - 1}/{opened.size}")
        self.set_header("Content-Length", end - start)
        if self.request.method == "GET":
            await self.stream(opened.fd, start, end)

    def not_modified(self, opened: storage.Opened) -> bool:
        if_none_match = self.request.headers.get("If-None-Match")
        if if_none_match is not None:
            return storage.etag_matches(if_none_match, opened.etag)
        since = self.request.headers.get("If-Modified-Since")
        if since:
            with contextlib.suppress(TypeError, ValueError):
                return int(opened.mtime) <= email.utils.parsedate_to_datetime(
                    since).timestamp()
        return False

    def wanted_range(self, opened: storage.Opened) -> tuple[int, int] | None:
        if_range = self.request.headers.get("If-Range")
        if if_range is not None and if_range.strip() not in (
                opened.etag, format_timestamp(opened.mtime)):
            return None  # the client's copy is stale: it needs the whole file
        return storage.parse_range(self.request.headers.get("Range"), opened.size)

    async def stream(self, fd: int, start: int, end: int) -> None:
        """Send bytes ``start:end``, reading the next chunk while this one is sent."""
        run_fs = self.services.run_fs

        def read(offset: int) -> asyncio.Future[bytes]:
            return asyncio.ensure_future(run_fs(os.pread, fd,
                                                min(CHUNK, end - offset), offset))

        offset = start
        pending = read(offset) if offset < end else None
        try:
            while pending is not None:
                data = await pending
                pending = None
                if not data:
                    log.warning("%s shrank while being sent", self.request.path)
                    self.request.connection.close()  # type: ignore[union-attr]
                    return
                offset += len(data)
                if offset < end:
                    pending = read(offset)
                self.write(data)
                await self.flush()
        except tornado.iostream.StreamClosedError:
            log.debug("download of %s stopped: the client went away", self.request.path)
        finally:
            if pending is not None:
                # the fd is closed after this returns: no read may still be using it
                await asyncio.wait([pending])


@tornado.web.stream_request_body
class UploadHandler(FilesHandler):
    SUPPORTED_METHODS = ("PUT",)

    def initialize(self) -> None:
        self.relpath = ""
        self.upload: storage.Upload | None = None
        # nginx's buffered body, once trusted: removed unless it is moved into place
        self.buffered: Path | None = None
        self.expected_size: int | None = None
        self.digests: dict[str, str] = {}
        self.received = 0
        self.batch = bytearray()
        self.writing: asyncio.Future[None] | None = None
        # one file operation at a time, in order: writes, then commit or discard
        self.lock = asyncio.Lock()
        self.closed = False
        # once the commit is under way it cleans up after itself if it fails
        self.committing = False
        self.discarding = False

    async def serial(self, fn: Callable[..., Any], *args: Any) -> Any:
        async with self.lock:
            return await self.services.run_fs(fn, *args)

    async def prepare(self) -> None:
        try:
            await self.start()
        except BaseException:
            await self.discard_now()
            raise

    async def start(self) -> None:
        config = self.services.config
        header = self.request.headers.get("X-Upload-File")
        if header is not None:
            self.buffered = await self.trusted_buffered_file(header)
        raw = self.path_args[0]
        self.relpath = self.checked_path(raw)
        if not self.relpath or raw.endswith("/"):
            raise tornado.web.HTTPError(400, "the path must name a file")
        await self.authorize_path(self.relpath)
        try:
            self.digests = storage.parse_checksums(self.request.headers.get("X-Checksum", ""))
        except ValueError as e:
            raise tornado.web.HTTPError(400, "%s", e) from e
        self.expected_size = self.announced_size(config.files_max_upload_bytes)
        if self.buffered is not None:
            if self.request.headers.get("Content-Length", "0") != "0":
                raise tornado.web.HTTPError(
                    400, "a request with X-Upload-File must come without its body "
                         "(nginx: proxy_pass_request_body off; Content-Length \"\")")
            if self.closed:
                self.cleanup()
            return
        if self.request.connection is not None:
            # the limit is ours (data_received answers 413); Tornado's own would answer a
            # chunked body that crosses it with a bare 400
            self.request.connection.set_max_body_size(sys.maxsize)  # type: ignore[attr-defined]
        with _http_errors():
            self.upload = await self.serial(storage.Upload, config.files_dir, self.relpath,
                                            self.digests.keys())
        if self.closed:
            self.cleanup()
            return
        await self.authorize_path(self.relpath, self.upload.real_relpath)

    async def trusted_buffered_file(self, header: str) -> Path:
        config = self.services.config
        if not self.from_trusted_proxy():
            raise tornado.web.HTTPError(400, "X-Upload-File is accepted only from the "
                                             "trusted proxy")
        if not config.files_nginx_upload_dir:
            raise tornado.web.HTTPError(400, "X-Upload-File is not accepted: "
                                             "files_nginx_upload_dir is not set")
        source: Path | None = await self.services.run_fs(
            storage.buffered_file, header, Path(config.files_nginx_upload_dir))
        if source is None:
            raise tornado.web.HTTPError(400, "X-Upload-File is not a file in "
                                             "files_nginx_upload_dir")
        return source

    def announced_size(self, limit: int) -> int | None:
        """The body's size as the request states it: Content-Length (or nginx's
        X-Upload-Length) and X-Size, which must agree and be within ``limit``."""
        length_header = "X-Upload-Length" if self.buffered is not None else "Content-Length"
        sizes = set()
        for name in (length_header, "X-Size"):
            value = self.request.headers.get(name, "").strip()
            if value:
                if not value.isascii() or not value.isdigit():
                    raise tornado.web.HTTPError(400, "%s must be a number of bytes", name)
                sizes.add(int(value))
        if sizes and max(sizes) > limit:
            raise tornado.web.HTTPError(413, "the body is over %d bytes", limit)
        if len(sizes) > 1:
            raise tornado.web.HTTPError(400, "%s and X-Size disagree", length_header)
        return sizes.pop() if sizes else None

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        if self.upload is None or self._finished:
            return None
        self.received += len(chunk)
        limit = self.services.config.files_max_upload_bytes
        if self.received > limit:
            return self.refuse(413, f"the body is over {limit} bytes")
        self.batch += chunk
        if len(self.batch) < BATCH:
            return None
        # Tornado waits for this before it reads on: at most two batches in memory
        return self.write_batch()

    async def write_batch(self) -> None:
        assert self.upload is not None
        data = bytes(self.batch)
        self.batch.clear()
        if self.writing is not None:
            previous, self.writing = self.writing, None
            try:
                await previous
            except OSError as e:
                status = 507 if storage.storage_full(e) else 500
                log.error("writing %s failed: %s", self.relpath, e)
                await self.refuse(status, "the file could not be written")
                return
        self.writing = asyncio.ensure_future(self.serial(self.upload.write, data))

    async def refuse(self, status: int, message: str) -> None:
        """Answer now, mid-body (Tornado then closes the connection), once the temporary
        file is gone."""
        await self.discard_now()
        if not self._finished:
            self.set_status(status)
            self.finish({"status": status, "error": message})

    async def put(self, path: str) -> None:
        if self._finished:
            return
        try:
            stored = await self.store()
        except BaseException:
            await self.discard_now()
            raise
        if stored is None:
            return
        log.info("stored %s (%d bytes%s)", stored.relpath, stored.size,
                 ", moved from nginx's buffer" if self.upload is None else "")
        self.set_status(201 if stored.created else 200)
        self.set_header("Location", "/download/" + urllib.parse.quote(stored.relpath))
        self.finish({"path": stored.relpath, "size": stored.size, "sha512": stored.sha512})

    async def store(self) -> storage.Stored | None:
        config = self.services.config
        with _http_errors():
            if self.buffered is not None:
                source, self.buffered = self.buffered, None
                stored: storage.Stored | None = await self.services.run_fs(
                    storage.adopt_buffered, source, config.files_dir, self.relpath,
                    self.expected_size, self.digests, config.files_max_upload_bytes)
            else:
                assert self.upload is not None
                if self.writing is not None:
                    writing, self.writing = self.writing, None
                    await writing
                if self.batch:
                    await self.serial(self.upload.write, bytes(self.batch))
                    self.batch.clear()
                if self.closed:
                    return None  # the client went away: cleanup() discards the upload
                self.committing = True
                stored = await self.serial(self.upload.commit, self.expected_size,
                                           self.digests)
        return stored

    def on_connection_close(self) -> None:
        self.closed = True
        super().on_connection_close()
        self.cleanup()

    def on_finish(self) -> None:
        super().on_finish()
        self.cleanup()

    def cleanup(self) -> None:
        """Leave nothing behind but a committed file: no temporary file, no nginx buffer.
        For a client that went away; a refusal cleans up before it answers."""
        if self.buffered is not None or (
                self.upload is not None and not (self.committing or self.discarding)):
            _spawn(self.discard_now())

    async def discard_now(self) -> None:
        upload, buffered, self.buffered = self.upload, self.buffered, None
        if buffered is not None:
            await self.services.run_fs(storage.remove_buffered, buffered)
        if upload is None or self.committing or self.discarding:
            return
        self.discarding = True
        # after the lock, every write is done and a commit has either happened or not
        await self.serial(upload.discard)
        if self.writing is not None and self.writing.done() and not self.writing.cancelled():
            self.writing.exception()  # seen: a failed write is not worth a second report


def routes() -> list[tuple[str, type]]:
    return [(r"/download/(.*)", DownloadHandler), (r"/upload/(.*)", UploadHandler)]
