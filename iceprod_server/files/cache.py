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
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from iceprod_server.files import cache_store as store
from iceprod_server.files.cache_fill import ClientGone, Fill, Reader, Source
from iceprod_server.files.cache_store import Entry, key_for

__all__ = ["Cache", "ClientGone", "Entry", "Fill", "Reader", "key_for"]

log = logging.getLogger(__name__)

RESCAN_SECONDS = 30.0


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
        entries = await self.run_fs(store.scan, self.root, startup)
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
        found: tuple[Entry, int] | None = await self.run_fs(store.open_entry, self.root, key,
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

    def running(self, fill: Fill, alive: bool) -> None:
        if alive:
            self._running.add(fill)
        else:
            self._running.discard(fill)

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
                free = await self.run_fs(store.disk_free, self.root)
                if (self._used + reserved + n <= self.max_bytes
                        and free - not_written - n >= self.reserve_bytes):
                    self._reserved[fill] = self._reserved.get(fill, 0) + n
                    return True
                if not self._entries:
                    return False
                key, victim = next(iter(self._entries.items()))
                await self.run_fs(store.evict, self.root, key)
                if self._entries.pop(key, None) is not None:
                    self._used -= victim.size
                log.info("proxy cache: evicted %s (%d bytes)", victim.url, victim.size)

    def release(self, fill: Fill) -> None:
        self._reserved.pop(fill, None)

    async def disk_free(self) -> int:
        free: int = await self.run_fs(store.disk_free, self.root)
        return free
