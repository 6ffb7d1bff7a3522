"""The proxy's cache on a real directory and a real thread pool, fed by scripted sources:
single-flight fills, failures, LRU eviction, files too big to cache, restarts and two
processes' worth of caches on one directory."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from iceprod_server.files.cache import Cache, key_for
from iceprod_server.files.fetch import OnChunk, OnStart, SourceError

T = TypeVar("T")
URL = "http://127.0.0.1:1/data/"
GiB = 1024**3


class Collect:
    """A caller that keeps what it is sent; ``delay`` makes it slow."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.size: int | None = -1
        self.sha512: str | None = None
        self.data = bytearray()

    def start(self, size: int | None, sha512: str | None) -> None:
        self.size, self.sha512 = size, sha512

    def send(self, chunk: bytes) -> Awaitable[Any] | None:
        self.data += chunk
        return asyncio.sleep(self.delay) if self.delay else None


class Source:
    """A scripted upstream: counts its calls, can be slow, can break at a byte offset."""

    def __init__(self, data: bytes, chunk: int = 64 * 1024, announce: bool = True,
                 fail_at: int | None = None, delay: float = 0.0,
                 announce_size: int | None = None) -> None:
        self.data, self.chunk, self.announce = data, chunk, announce
        self.fail_at, self.delay, self.announce_size = fail_at, delay, announce_size
        self.calls = 0
        self.done = asyncio.Event()

    async def __call__(self, on_start: OnStart, on_chunk: OnChunk) -> None:
        self.calls += 1
        try:
            size = self.announce_size if self.announce_size is not None else len(self.data)
            on_start(size if self.announce else None)
            for i in range(0, len(self.data), self.chunk):
                if self.fail_at is not None and i >= self.fail_at:
                    raise SourceError(502, "the source broke off")
                waiting = on_chunk(self.data[i:i + self.chunk])
                if waiting is not None:
                    await waiting
                if self.delay:
                    await asyncio.sleep(self.delay)
        finally:
            self.done.set()


def run(tmp: Path, scenario: Callable[[Callable[..., Cache]], Coroutine[Any, Any, T]]) -> T:
    """Run ``scenario`` on a loop with an fs pool; it makes caches on ``tmp/cache``."""
    pool = ThreadPoolExecutor(4)

    async def run_fs(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def make(max_bytes: int = GiB, reserve: int = 0) -> Cache:
        return Cache(tmp / "cache", max_bytes, reserve, run_fs)

    try:
        return asyncio.run(scenario(make))
    finally:
        pool.shutdown()


def leftovers(tmp: Path) -> list[str]:
    return sorted(p.name for p in (tmp / "cache" / "tmp").iterdir())


def test_a_fill_is_published_with_size_and_sha512(tmp_path: Path) -> None:
    data = os.urandom(300_000)

    async def scenario(make: Callable[..., Cache]) -> None:
        cache = make()
        await cache.start()
        source = Source(data)
        reader = Collect()
        await cache.fill(URL + "a", source).serve(reader)
        assert bytes(reader.data) == data and reader.size == len(data)
        entry = await cache.lookup(URL + "a")
        assert entry is not None
        assert (entry.size, entry.sha512) == (len(data), hashlib.sha512(data).hexdigest())
        # a second caller is served from disk, with the checksum up front
        again = Collect()
        await cache.fill(URL + "a", source).serve(again)
        assert bytes(again.data) == data and again.sha512 == entry.sha512
        assert source.calls == 1

    run(tmp_path, scenario)
    folder = tmp_path / "cache" / "entries" / key_for(URL + "a")[:2] / key_for(URL + "a")
    meta = json.loads((folder / "meta.json").read_text())
    assert meta == {"url": URL + "a", "size": 300_000,
                    "sha512": hashlib.sha512((folder / "data").read_bytes()).hexdigest()}
    assert leftovers(tmp_path) == []


def test_concurrent_callers_share_one_fetch_and_stream_while_it_grows(tmp_path: Path) -> None:
    data = os.urandom(2_000_000)

    async def scenario(make: Callable[..., Cache]) -> None:
        cache = make()
        await cache.start()
        source = Source(data, delay=0.01)
        readers = [Collect() for _ in range(10)]
        fills = [cache.fill(URL + "b", source) for _ in readers]
        assert len({id(f) for f in fills}) == 1
        tasks = [asyncio.ensure_future(f.serve(r)) for f, r in zip(fills, readers,
                                                                    strict=True)]
        # followers get bytes before the source is done: they read the growing file
        while not all(len(r.data) > 0 for r in readers):
            await asyncio.sleep(0.005)
        assert not source.done.is_set()
        await asyncio.gather(*tasks)
        assert source.calls == 1
        assert all(bytes(r.data) == data for r in readers)

    run(tmp_path, scenario)


def test_a_failed_fetch_fails_every_caller_and_leaves_nothing(tmp_path: Path) -> None:
    data = os.urandom(1_000_000)

    async def scenario(make: Callable[..., Cache]) -> None:
        cache = make()
        await cache.start()
        source = Source(data, fail_at=500_000, delay=0.002)
        readers = [Collect() for _ in range(3)]
        results = await asyncio.gather(*(cache.fill(URL + "c", source).serve(r)
                                         for r in readers), return_exceptions=True)
        assert all(isinstance(r, SourceError) and r.status == 502 for r in results)
        assert all(len(r.data) < len(data) for r in readers)
        assert await cache.lookup(URL + "c") is None
        assert leftovers(tmp_path) == []
        # a retry fetches again
        retry = Source(data)
        reader = Collect()
        await cache.fill(URL + "c", retry).serve(reader)
        assert retry.calls == 1 and bytes(reader.data) == data

    run(tmp_path, scenario)


def test_an_error_before_the_body_reaches_callers_unstarted(tmp_path: Path) -> None:
    async def missing(on_start: OnStart, on_chunk: OnChunk) -> None:
        raise SourceError(404, "no such file")

    async def scenario(make: Callable[..., Cache]) -> None:
        cache = make()
        await cache.start()
        reader = Collect()
        with pytest.raises(SourceError) as caught:
            await cache.fill(URL + "missing", missing).serve(reader)
        assert caught.value.status == 404 and reader.size == -1

    run(tmp_path, scenario)


def test_a_short_body_is_not_cached(tmp_path: Path) -> None:
    async def scenario(make: Callable[..., Cache]) -> None:
        cache = make()
        await cache.start()
        with pytest.raises(SourceError, match="sent 1000 of 5000"):
            await cache.fill(URL + "short", Source(b"x" * 1000, announce_size=5000)).serve(
                Collect())
        assert await cache.lookup(URL + "short") is None

    run(tmp_path, scenario)
    assert leftovers(tmp_path) == []


def test_least_recently_used_is_evicted_first(tmp_path: Path) -> None:
    async def scenario(make: Callable[..., Cache]) -> None:
        cache = make(max_bytes=250_000)
        await cache.start()
        for name in ("old", "middle"):
            await cache.fill(URL + name, Source(os.urandom(100_000))).serve(Collect())
            await asyncio.sleep(0.02)  # distinct last-use times on disk
        # using "old" again makes "middle" the least recently used
        assert await cache.lookup(URL + "old") is not None
        await cache.fill(URL + "new", Source(os.urandom(100_000))).serve(Collect())
        assert await cache.lookup(URL + "middle") is None
        assert await cache.lookup(URL + "old") is not None
        assert await cache.lookup(URL + "new") is not None

    run(tmp_path, scenario)


def test_a_file_bigger_than_the_cache_is_streamed_once_and_not_kept(tmp_path: Path) -> None:
    data = os.urandom(600_000)

    async def scenario(make: Callable[..., Cache]) -> None:
        cache = make(max_bytes=500_000)
        await cache.start()
        await cache.fill(URL + "small", Source(os.urandom(1000))).serve(Collect())
        source = Source(data, delay=0.005)
        readers = [Collect(), Collect(delay=0.002)]
        await asyncio.gather(*(cache.fill(URL + "big", source).serve(r) for r in readers))
        assert source.calls == 1
        assert all(bytes(r.data) == data and r.size == len(data) for r in readers)
        assert await cache.lookup(URL + "big") is None
        # nothing was evicted for it
        assert await cache.lookup(URL + "small") is not None
        # its checksum is still known to whoever waits for the fill
        fill = cache.fill(URL + "big", Source(data))
        assert await fill.result() == (len(data), hashlib.sha512(data).hexdigest())

    run(tmp_path, scenario)
    assert leftovers(tmp_path) == []


def test_the_free_space_reserve_is_kept(tmp_path: Path) -> None:
    async def scenario(make: Callable[..., Cache]) -> None:
        cache = make(reserve=await_free(tmp_path) + GiB)
        await cache.start()
        reader = Collect()
        await cache.fill(URL + "r", Source(b"y" * 10_000)).serve(reader)
        assert bytes(reader.data) == b"y" * 10_000
        assert await cache.lookup(URL + "r") is None

    run(tmp_path, scenario)


def await_free(path: Path) -> int:
    import shutil

    return shutil.disk_usage(path).free


def test_unknown_size_is_cached_when_it_fits(tmp_path: Path) -> None:
    data = os.urandom(40 * 1024 * 1024 + 5)  # past the first reservation step

    async def scenario(make: Callable[..., Cache]) -> None:
        cache = make()
        await cache.start()
        reader = Collect()
        await cache.fill(URL + "u", Source(data, chunk=1 << 20, announce=False)).serve(reader)
        assert reader.size is None and bytes(reader.data) == data
        entry = await cache.lookup(URL + "u")
        assert entry is not None and entry.size == len(data)

    run(tmp_path, scenario)


def test_a_restarted_cache_keeps_its_entries_and_cleans_up(tmp_path: Path) -> None:
    data = os.urandom(50_000)

    async def first(make: Callable[..., Cache]) -> None:
        cache = make()
        await cache.start()
        await cache.fill(URL + "kept", Source(data)).serve(Collect())

    run(tmp_path, first)
    # what a killed process leaves: a fill in progress, and an entry without metadata
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / "cache" / "tmp" / f"{key_for(URL + 'x')}.{dead}.abc"
    stale.mkdir()
    (stale / "data").write_bytes(b"partial")
    broken = tmp_path / "cache" / "entries" / "ff" / ("f" * 64)
    broken.mkdir(parents=True)
    (broken / "data").write_bytes(b"no meta")
    os.utime(broken, (0, 0))

    async def second(make: Callable[..., Cache]) -> None:
        cache = make()
        await cache.start()
        source = Source(b"other")
        reader = Collect()
        await cache.fill(URL + "kept", source).serve(reader)
        assert source.calls == 0 and bytes(reader.data) == data

    run(tmp_path, second)
    assert not stale.exists() and not broken.exists()


def test_two_caches_on_one_directory_publish_one_entry(tmp_path: Path) -> None:
    data = os.urandom(500_000)

    async def scenario(make: Callable[..., Cache]) -> None:
        one, two = make(), make()
        await one.start()
        await two.start()
        readers = [Collect(), Collect()]
        await asyncio.gather(one.fill(URL + "s", Source(data, delay=0.001)).serve(readers[0]),
                             two.fill(URL + "s", Source(data, delay=0.001)).serve(readers[1]))
        assert all(bytes(r.data) == data for r in readers)
        # each sees the one published entry; a third caller of either reads it whole
        for cache in (one, two):
            reader = Collect()
            source = Source(b"")
            await cache.fill(URL + "s", source).serve(reader)
            assert source.calls == 0 and bytes(reader.data) == data

    run(tmp_path, scenario)
    assert leftovers(tmp_path) == []
