"""The file proxy's cache: files on disk keyed by their normalised URL, filled once while
they stream to the first callers, evicted least recently used first.

On disk, under the cache directory::

    entries/<k[:2]>/<k>/data        the file          (k = SHA-256 of the URL)
    entries/<k[:2]>/<k>/meta.json   its URL, size and SHA-512; its mtime is the last use
    tmp/<k>.<pid>.<random>/         a fill in progress, or an entry being removed

A fill writes ``data`` and ``meta.json`` into its own directory under ``tmp/`` and renames
that directory into ``entries/`` when the file is complete and its size is what the source
announced: an entry appears whole or not at all, and several server processes can share the
directory (the first rename wins; a later one finds the place taken and drops its copy). An
entry is evicted by renaming it back under ``tmp/`` before it is deleted, so a reader that
has it open keeps reading. At start, and again every :data:`RESCAN_SECONDS` when room is
needed, the index is rebuilt from ``entries/``; leftovers of dead processes in ``tmp/`` are
removed. All disk work runs on the ``fs`` pool.

Concurrent requests for one URL share one :class:`Fill`: the source is fetched once into a
temporary file, and every caller streams from that file as it grows (a caller that arrives
later starts from the beginning). A file announced bigger than the cache can hold is not
written at all: its chunks go straight to the callers already waiting, paced by the slowest.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from iceprod_server.files.fetch import OnChunk, OnStart, SourceError

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
# bytes a fill buffers for the disk before the source has to wait
HIGH_WATER = 4 * 1024 * 1024
# room is reserved in steps of this for a file whose size the source did not announce
GROW_STEP = 16 * 1024 * 1024
RESCAN_SECONDS = 30.0

Source = Callable[[OnStart, OnChunk], Awaitable[None]]


class ClientGone(Exception):
    """The caller went away; what it was sent is no longer wanted."""


class Reader(Protocol):
    """A caller of the proxy, as a fill sees it."""

    def start(self, size: int | None, sha512: str | None) -> None:
        """The body begins (``size`` None: unknown)."""

    def send(self, chunk: bytes) -> Awaitable[Any] | None:
        """Pass ``chunk`` on; an awaitable when the caller should be waited for."""


@dataclass
class Entry:
    key: str
    url: str
    size: int
    sha512: str
    last_used: float


def key_for(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


# -- disk work (blocking: run on the fs pool) ----------------------------------------------

def _entry_dir(root: Path, key: str) -> Path:
    return root / "entries" / key[:2] / key


def _read_meta(folder: Path) -> Entry | None:
    meta = folder / "meta.json"
    try:
        raw = json.loads(meta.read_text())
        return Entry(folder.name, str(raw["url"]), int(raw["size"]), str(raw["sha512"]),
                     meta.stat().st_mtime)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _scan(root: Path, startup: bool) -> list[Entry]:
    """The valid entries, oldest use first; removes broken entries and the temporary
    directories of processes that are gone (at start-up, also this pid's: a predecessor's)."""
    (root / "entries").mkdir(parents=True, exist_ok=True)
    (root / "tmp").mkdir(exist_ok=True)
    for path in (root / "tmp").iterdir():
        pid_text = path.name.split(".")[1] if path.name.count(".") >= 2 else ""
        pid = int(pid_text) if pid_text.isdigit() else 0
        if (pid == os.getpid() and startup) or (pid != os.getpid() and not _pid_alive(pid)):
            shutil.rmtree(path, ignore_errors=True)
    entries = []
    for fan in (root / "entries").iterdir():
        for folder in fan.iterdir() if fan.is_dir() else ():
            entry = _read_meta(folder)
            try:
                ok = entry is not None and (folder / "data").stat().st_size == entry.size
            except OSError:
                ok = False
            if entry is not None and ok:
                entries.append(entry)
            elif _age(folder) > 60:
                # an incomplete entry; a young one may be another process's rename
                _evict(root, folder.name)
    return sorted(entries, key=lambda e: e.last_used)


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _open_entry(root: Path, key: str, keep_open: bool) -> tuple[Entry, int] | None:
    """The entry and its data opened for reading (-1 unless ``keep_open``), marked as just
    used; None when there is no such entry."""
    folder = _entry_dir(root, key)
    try:
        fd = os.open(folder / "data", os.O_RDONLY)
    except FileNotFoundError:
        return None
    entry = _read_meta(folder)
    if entry is None or os.fstat(fd).st_size != entry.size:
        os.close(fd)
        return None
    try:
        os.utime(folder / "meta.json")
        entry.last_used = time.time()
    except FileNotFoundError:  # evicted meanwhile; the open file is still whole
        pass
    if not keep_open:
        os.close(fd)
        fd = -1
    return entry, fd


def _new_temp(root: Path, key: str) -> tuple[Path, int, int]:
    folder = root / "tmp" / f"{key}.{os.getpid()}.{secrets.token_hex(6)}"
    folder.mkdir(parents=True)
    wfd = os.open(folder / "data", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    return folder, wfd, os.open(folder / "data", os.O_RDONLY)


def _write_all(fd: int, data: bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _publish(root: Path, folder: Path, wfd: int, entry: Entry) -> None:
    """Move a complete fill into place, with its metadata in the same rename."""
    os.close(wfd)
    meta = {k: v for k, v in asdict(entry).items() if k in ("url", "size", "sha512")}
    (folder / "meta.json").write_text(json.dumps(meta))
    dest = _entry_dir(root, entry.key)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(folder, dest)
    except OSError as e:
        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        shutil.rmtree(folder, ignore_errors=True)  # another process put it there first


def _discard(folder: Path | None, wfd: int | None) -> None:
    if wfd is not None:
        os.close(wfd)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def _evict(root: Path, key: str) -> None:
    trash = root / "tmp" / f"{key}.{os.getpid()}.{secrets.token_hex(6)}.evicted"
    try:
        os.rename(_entry_dir(root, key), trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _disk_free(root: Path) -> int:
    return shutil.disk_usage(root).free


# -- the cache -----------------------------------------------------------------------------

class Cache:
    def __init__(self, root: Path, max_bytes: int, reserve_bytes: int,
                 run_fs: Callable[..., Awaitable[Any]]) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.reserve_bytes = reserve_bytes
        self.run_fs = run_fs
        self._entries: OrderedDict[str, Entry] = OrderedDict()  # least recently used first
        self._used = 0
        self._fills: dict[str, Fill] = {}
        # the loop keeps only weak references to tasks: running fills are held here
        self._running: set[Fill] = set()
        self._reserved: dict[Fill, int] = {}
        self._room = asyncio.Lock()
        self._scanned = 0.0

    async def start(self) -> None:
        await self._rescan(startup=True)
        log.info("proxy cache %s: %d entries, %d bytes", self.root, len(self._entries),
                 self._used)

    async def _rescan(self, startup: bool = False) -> None:
        entries = await self.run_fs(_scan, self.root, startup)
        self._entries = OrderedDict((e.key, e) for e in entries)
        self._used = sum(e.size for e in entries)
        self._scanned = time.monotonic()

    def fill(self, url: str, source: Source) -> Fill:
        """The fill of ``url``: the one in progress, or a new one (which serves the entry
        when there is one)."""
        key = key_for(url)
        fill = self._fills.get(key)
        if fill is None:
            fill = self._fills[key] = Fill(self, key, url, source)
            fill.begin()
        return fill

    async def lookup(self, url: str) -> Entry | None:
        found = await self.open_entry(key_for(url), keep_open=False)
        return None if found is None else found[0]

    async def open_entry(self, key: str, keep_open: bool) -> tuple[Entry, int] | None:
        found: tuple[Entry, int] | None = await self.run_fs(_open_entry, self.root, key,
                                                             keep_open)
        if found is not None:
            self.add(found[0])
        elif key in self._entries:
            self._used -= self._entries.pop(key).size
        return found

    def add(self, entry: Entry) -> None:
        old = self._entries.pop(entry.key, None)
        self._used += entry.size - (old.size if old else 0)
        self._entries[entry.key] = entry

    def forget(self, fill: Fill) -> None:
        if self._fills.get(fill.key) is fill:
            del self._fills[fill.key]

    async def make_room(self, fill: Fill, n: int) -> bool:
        """Reserve ``n`` more bytes for ``fill``, evicting least recently used entries to
        stay under the size limit and keep the free-space reserve; False if that cannot be
        done (nothing is evicted for a file bigger than the limit)."""
        if n == 0:
            return True
        async with self._room:
            if time.monotonic() - self._scanned > RESCAN_SECONDS:
                await self._rescan()
            if self._reserved.get(fill, 0) + n > self.max_bytes:
                return False
            while True:
                reserved = sum(self._reserved.values())
                not_written = sum(max(0, r - f.written) for f, r in self._reserved.items())
                free = await self.run_fs(_disk_free, self.root)
                if (self._used + reserved + n <= self.max_bytes
                        and free - not_written - n >= self.reserve_bytes):
                    self._reserved[fill] = self._reserved.get(fill, 0) + n
                    return True
                if not self._entries:
                    return False
                key, victim = next(iter(self._entries.items()))
                await self.run_fs(_evict, self.root, key)
                if self._entries.pop(key, None) is not None:
                    self._used -= victim.size
                log.info("proxy cache: evicted %s (%d bytes)", victim.url, victim.size)

    def release(self, fill: Fill) -> None:
        self._reserved.pop(fill, None)

    async def disk_free(self) -> int:
        free: int = await self.run_fs(_disk_free, self.root)
        return free


class Fill:
    """One fetch of a URL into the cache, shared by every caller that asks meanwhile."""

    def __init__(self, cache: Cache, key: str, url: str, source: Source) -> None:
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
        self.cache._running.add(self)
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
                entry, self._rfd = found
                self.size = self.written = entry.size
                self.sha512 = entry.sha512
                self.started = True
            else:
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
            self.cache._running.discard(self)
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
                _new_temp, self.cache.root, self.key)
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
            await asyncio.gather(self.cache.run_fs(_write_all, self._wfd, data),
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
            await self.cache.run_fs(_publish, self.cache.root, folder, wfd, entry)
            self.cache.add(entry)
        else:
            await self.cache.run_fs(_discard, folder, wfd)
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
                await self.cache.run_fs(_discard, folder, wfd)
        except Exception:  # the process is shutting down; the next start cleans tmp/
            log.warning("%s: could not remove the failed fill", self.url, exc_info=True)
