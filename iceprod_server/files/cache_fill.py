"""One fill of the cache: the source fetched once into a temporary file while every
caller of the same URL streams from that file as it grows (see
:mod:`iceprod_server.files.cache`)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from iceprod_server import metrics
from iceprod_server.files import cache_store as store
from iceprod_server.files.cache_store import Entry
from iceprod_server.files.fetch import OnChunk, OnStart, SourceError

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
# bytes a fill buffers for the disk before the source has to wait
HIGH_WATER = 4 * 1024 * 1024
# room is reserved in steps of this for a file whose size the source did not announce
GROW_STEP = 16 * 1024 * 1024

Source = Callable[[OnStart, OnChunk], Awaitable[None]]


class ClientGone(Exception):
    """The caller went away; what it was sent is no longer wanted."""


class Reader(Protocol):
    """A caller of the proxy, as a fill sees it."""

    def start(self, size: int | None, sha512: str | None) -> None:
        """The body begins (``size`` None: unknown)."""

    def send(self, chunk: bytes) -> Awaitable[Any] | None:
        """Pass ``chunk`` on; an awaitable when the caller should be waited for."""


class Owner(Protocol):
    """The cache, as a fill sees it: where entries live, and the room they may take."""

    root: Path
    reserve_bytes: int
    run_fs: Callable[..., Awaitable[Any]]

    async def open_entry(self, key: str, keep_open: bool) -> tuple[Entry, int] | None: ...

    def add(self, entry: Entry) -> None: ...

    def forget(self, fill: Fill) -> None:
        """Later callers of the fill's URL start a fill of their own."""

    def running(self, fill: Fill, alive: bool) -> None:
        """The fill's task began (True) or ended (False)."""

    async def make_room(self, fill: Fill, n: int) -> bool: ...

    def release(self, fill: Fill) -> None: ...

    async def disk_free(self) -> int: ...


class Fill:
    """One fetch of a URL into the cache, shared by every caller that asks meanwhile."""

    def __init__(self, cache: Owner, key: str, url: str, source: Source) -> None:
        self.cache = cache
        self.key = key
        self.url = url
        self._source = source
        self.size: int | None = None
        self.sha512: str | None = None
        self.written = 0  # bytes on disk, readable by followers
        self.error: SourceError | None = None
        self.started = False  # the body began: readers may be started
        self.finished = False
        self.pushing = False  # too big to cache: chunks go straight to the readers
        self._readers: list[Reader] = []  # attached before the start
        self._dropped: dict[Reader, BaseException] = {}
        self._changed = asyncio.Event()
        self._users = 0
        self._tmp: Path | None = None
        self._wfd: int | None = None
        self._rfd: int | None = None
        self._buf = bytearray()
        self._drain: asyncio.Future[None] | None = None
        self._hasher = hashlib.sha512()
        self._admitted = False
        self._publish = True
        self._allowance = 0  # bytes the cache has reserved for this fill
        self._received = 0
        self._task: asyncio.Future[None] | None = None

    def begin(self) -> None:
        self.cache.running(self, True)
        self._task = asyncio.ensure_future(self._run())

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- the readers' side -----------------------------------------------------------------

    async def serve(self, reader: Reader) -> None:
        """Stream the file to ``reader``. Raises :class:`SourceError`; before
        ``reader.start`` was called its status is the answer to give."""
        self._users += 1
        try:
            if not self.started:
                self._readers.append(reader)
            while not self.started and not self.finished:
                await self._changed.wait()
            if self.pushing:
                while not self.finished and reader in self._readers:
                    await self._changed.wait()
                if reader in self._dropped:
                    raise self._dropped.pop(reader)
            elif self.started:
                reader.start(self.size, self.sha512)
                await self._tail(reader)
            if self.error is not None:
                raise self.error
        finally:
            self._users -= 1
            if reader in self._readers:
                self._readers.remove(reader)
            await self._close_reader_fd()

    async def result(self) -> tuple[int, str]:
        """Wait for the fill to end; the file's size and SHA-512."""
        while not self.finished:
            await self._changed.wait()
        if self.error is not None:
            raise self.error
        assert self.size is not None and self.sha512 is not None
        return self.size, self.sha512

    async def _tail(self, reader: Reader) -> None:
        pos = 0
        while True:
            if pos < self.written:
                n = min(CHUNK, self.written - pos)
                data: bytes = await self.cache.run_fs(os.pread, self._rfd, n, pos)
                if not data:
                    raise SourceError(500, f"{self.url}: the cache file is short")
                pos += len(data)
                waiting = reader.send(data)
                if waiting is not None:
                    await waiting
            elif self.error is not None or self.finished:
                return
            else:
                await self._changed.wait()

    async def _close_reader_fd(self) -> None:
        if self._users == 0 and self.finished and self._rfd is not None:
            fd, self._rfd = self._rfd, None
            await self.cache.run_fs(os.close, fd)

    # -- the source's side -----------------------------------------------------------------

    async def _run(self) -> None:
        try:
            found = await self.cache.open_entry(self.key, keep_open=True)
            if found is not None:
                metrics.PROXY_CACHE_HITS.inc()
                entry, self._rfd = found
                self.size = self.written = entry.size
                self.sha512 = entry.sha512
                self.started = True
            else:
                metrics.PROXY_CACHE_MISSES.inc()
                await self._source(self._on_start, self._on_chunk)
                if not self._admitted:
                    await self._admit()
                await self._complete()
            self.finished = True
        except BaseException as e:
            await self._fail(e)
            if not isinstance(e, Exception):
                raise
        finally:
            self.cache.forget(self)
            self.cache.running(self, False)
            self._notify()
            await self._close_reader_fd()

    def _on_start(self, size: int | None) -> None:
        self.size = size

    def _on_chunk(self, chunk: bytes) -> Awaitable[Any] | None:
        if not self._admitted:
            return self._admit_then(chunk)
        if self.pushing:
            return self._push(chunk)
        return self._store(chunk)

    async def _admit_then(self, chunk: bytes) -> None:
        await self._admit()
        waiting = self._on_chunk(chunk)
        if waiting is not None:
            await waiting

    async def _admit(self) -> None:
        """Decide, once the source has answered, whether the file goes to disk."""
        self._admitted = True
        if self.size is not None and not await self.cache.make_room(self, self.size):
            log.info("%s: %d bytes do not fit the cache; streamed without caching",
                     self.url, self.size)
            self.pushing = True
            self.cache.forget(self)  # later callers fetch it themselves
            for reader in list(self._readers):
                self._call(reader, reader.start, self.size, None)
        else:
            if self.size is None:
                self._publish = await self.cache.make_room(self, GROW_STEP)
                self._allowance = GROW_STEP
            else:
                self._allowance = self.size
            self._tmp, self._wfd, self._rfd = await self.cache.run_fs(
                store.new_temp, self.cache.root, self.key)
        self.started = True
        self._notify()

    def _call(self, reader: Reader, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as e:
            self._drop(reader, e)
            return None

    def _drop(self, reader: Reader, error: BaseException) -> None:
        if reader in self._readers:
            self._readers.remove(reader)
            self._dropped[reader] = error
            self._notify()

    async def _push(self, chunk: bytes) -> None:
        waits: list[tuple[Reader | None, Awaitable[Any]]] = [
            (None, self.cache.run_fs(self._hasher.update, chunk))]
        for reader in list(self._readers):
            waiting = self._call(reader, reader.send, chunk)
            if waiting is not None:
                waits.append((reader, waiting))
        results = await asyncio.gather(*(w for _, w in waits), return_exceptions=True)
        for (waited, _), outcome in zip(waits, results, strict=True):
            if isinstance(outcome, BaseException):
                if waited is None:
                    raise outcome
                self._drop(waited, outcome)
        self._received += len(chunk)
        if not self._readers and self._dropped:
            raise ClientGone("every caller went away")

    def _store(self, chunk: bytes) -> Awaitable[Any] | None:
        if self._drain is not None and self._drain.done():
            self._drain.result()  # a failed disk write ends the fill
        if self._received + len(chunk) > self._allowance:
            return self._grow_then_store(chunk)
        self._received += len(chunk)
        self._buf += chunk
        if self._drain is None:
            self._drain = asyncio.ensure_future(self._write_buffer())
        return self._drain if len(self._buf) >= HIGH_WATER else None

    async def _grow_then_store(self, chunk: bytes) -> None:
        if self.size is not None:
            raise SourceError(502, f"{self.url}: the source sent more than it announced")
        if self._publish and await self.cache.make_room(self, GROW_STEP):
            self._allowance += GROW_STEP
        else:
            # past what the cache may hold: keep streaming from disk while the disk keeps
            # its reserve, then drop the file instead of publishing it
            self._publish = False
            if await self.cache.disk_free() - GROW_STEP < self.cache.reserve_bytes:
                raise SourceError(502, f"{self.url}: the cache disk is full")
            self._allowance += GROW_STEP
        waiting = self._store(chunk)
        if waiting is not None:
            await waiting

    async def _write_buffer(self) -> None:
        while self._buf:
            data, self._buf = self._buf, bytearray()
            # the hash and the write of one batch run side by side on two fs threads
            await asyncio.gather(self.cache.run_fs(store.write_all, self._wfd, data),
                                 self.cache.run_fs(self._hasher.update, data))
            self.written += len(data)
            self._notify()
        self._drain = None

    async def _complete(self) -> None:
        while self._drain is not None:
            await self._drain
        if self.pushing:
            self.size = self._received
            self.sha512 = self._hasher.hexdigest()
            return
        if self.size is not None and self.written != self.size:
            raise SourceError(502, f"{self.url}: the source sent {self.written} of "
                                   f"{self.size} bytes")
        self.size = self.written
        self.sha512 = self._hasher.hexdigest()
        entry = Entry(self.key, self.url, self.size, self.sha512, time.time())
        folder, wfd, self._tmp, self._wfd = self._tmp, self._wfd, None, None
        assert folder is not None and wfd is not None
        if self._publish:
            await self.cache.run_fs(store.publish, self.cache.root, folder, wfd, entry)
            self.cache.add(entry)
        else:
            await self.cache.run_fs(store.discard, folder, wfd)
        self.cache.release(self)

    async def _fail(self, error: BaseException) -> None:
        if isinstance(error, SourceError):
            self.error = error
        elif isinstance(error, ClientGone):
            self.error = SourceError(502, f"{self.url}: every caller went away")
        else:
            if isinstance(error, Exception):
                log.error("%s: the cache fill failed", self.url, exc_info=error)
            self.error = SourceError(500, f"{self.url}: the proxy cache failed (the server's "
                                          "log says why)")
        self.finished = True
        self.cache.release(self)
        try:
            if self._drain is not None:
                await asyncio.gather(self._drain, return_exceptions=True)
            folder, wfd, self._tmp, self._wfd = self._tmp, self._wfd, None, None
            if folder is not None or wfd is not None:
                await self.cache.run_fs(store.discard, folder, wfd)
        except Exception:  # the process is shutting down; the next start cleans tmp/
            log.warning("%s: could not remove the failed fill", self.url, exc_info=True)
