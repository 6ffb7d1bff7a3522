"""The GridFTP client against a real ``globus-gridftp-server``: every operation of the
interface, on both backends (``library``, ``url-copy``) and both schemes (anonymous
``ftp://`` and ``gsiftp://`` with certificates); test ids read ``[ftp-library]``.

Each test gets a fresh directory on the server and checks what happened through the local
filesystem, which is what the server serves: a put is a file with the right bytes, an
rmtree leaves nothing. The tests of timeouts and refused connections use a listener that
never answers and a port nobody listens on.

Every operation must work on every backend and scheme: the ``url-copy`` backend
authenticates its own control connections with GSI, so no refusal is accepted.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from iceprod_server.gsiftp import (
    BACKENDS,
    CHECKSUM_ALGORITHMS,
    ConnectionError,
    Entry,
    GridFTPClient,
    GridFTPError,
    NotFoundError,
    TimeoutError,
)
from tests.support import gridftp
from tests.support.gridftp import (
    MiB,
    Site,
    assert_same_bytes,
    make_site,
    random_bytes,
)

# short enough for a quick suite, long enough that a slow start is not taken for a hang
SHORT_TIMEOUT = 2.0
# how much later than its timeout a TimeoutError may come (killing a subprocess, aborting
# a library handle)
TIMEOUT_SLACK = 5.0


@pytest.fixture(scope="module")
def served_root() -> Iterator[Path]:
    with gridftp.served_directory("tests") as path:
        yield path


@pytest.fixture(params=BACKENDS)
def site(request: pytest.FixtureRequest, gridftp_server: gridftp.GridFTPServer,
         served_root: Path) -> Iterator[Site]:
    with make_site(request, gridftp_server, request.param, served_root) as site:
        yield site


# -- get ---------------------------------------------------------------------------------


def test_get_into_memory(site: Site) -> None:
    data = random_bytes(3 * MiB + 17)
    site.write("blob.bin", data)
    assert_same_bytes(site.run(lambda c: c.get(site.url("blob.bin"))), data)


def test_get_to_a_file_leaves_only_the_file(site: Site, tmp_path: Path) -> None:
    data = random_bytes(2 * MiB + 5)
    site.write("blob.bin", data)
    dest = tmp_path / "downloads" / "copy.bin"
    dest.parent.mkdir()
    assert site.run(lambda c: c.get(site.url("blob.bin"), path=dest)) is None
    assert_same_bytes(dest.read_bytes(), data)
    assert os.listdir(dest.parent) == ["copy.bin"], "a temporary file was left beside it"


def test_failed_get_to_a_file_leaves_the_old_file_alone(site: Site, tmp_path: Path) -> None:
    dest = tmp_path / "copy.bin"
    dest.write_bytes(b"the previous download")
    with pytest.raises(NotFoundError):
        site.run(lambda c: c.get(site.url("missing.bin"), path=dest))
    assert os.listdir(tmp_path) == ["copy.bin"], "a temporary file was left behind"
    assert dest.read_bytes() == b"the previous download"


def test_get_to_a_callback_delivers_the_chunks_in_order(site: Site) -> None:
    data = random_bytes(8 * MiB + 3)
    site.write("blob.bin", data)
    chunks: list[bytes] = []
    assert site.run(lambda c: c.get(site.url("blob.bin"), callback=chunks.append)) is None
    assert len(chunks) > 1, "8 MiB came as one chunk: the file was held in memory"
    assert_same_bytes(b"".join(chunks), data)


def test_get_waits_for_an_awaitable_callback(site: Site) -> None:
    data = random_bytes(4 * MiB)
    site.write("blob.bin", data)
    received = bytearray()
    calls = {"started": 0, "finished": 0, "overlapping": 0}

    async def slow_consumer(chunk: bytes) -> None:
        if calls["started"] != calls["finished"]:
            calls["overlapping"] += 1
        calls["started"] += 1
        await asyncio.sleep(0.002)
        received.extend(chunk)
        calls["finished"] += 1

    async def go(c: GridFTPClient) -> dict[str, int]:
        assert await c.get(site.url("blob.bin"), callback=slow_consumer) is None
        return dict(calls)  # as it was when get returned

    at_return = site.run(go)
    assert at_return["overlapping"] == 0, "a chunk came before the previous one was consumed"
    assert at_return["finished"] == at_return["started"], \
        "get returned before the last callback completed"
    assert_same_bytes(bytes(received), data)


# -- put ---------------------------------------------------------------------------------


def test_put_bytes_replaces_an_existing_file(site: Site) -> None:
    site.write("doc.txt", b"an older and longer version of the document\n" * 100)
    data = b"the new version\n"
    assert site.run(lambda c: c.put(site.url("doc.txt"), data=data)) == len(data)
    assert site.read("doc.txt") == data


def test_put_an_empty_file(site: Site) -> None:
    assert site.run(lambda c: c.put(site.url("empty"), data=b"")) == 0
    assert site.read("empty") == b""


def test_put_from_a_file(site: Site, tmp_path: Path) -> None:
    data = random_bytes(5 * MiB + 11)
    source = tmp_path / "upload.bin"
    source.write_bytes(data)
    assert site.run(lambda c: c.put(site.url("upload.bin"), path=source)) == len(data)
    assert_same_bytes(site.read("upload.bin"), data)


def test_put_from_an_async_iterator(site: Site) -> None:
    pieces = [random_bytes(n, seed=n) for n in (1, 65536, 0, 300_001, 7, 2 * MiB)]

    async def stream() -> AsyncIterator[bytes]:
        for piece in pieces:
            await asyncio.sleep(0)
            yield piece

    sent = site.run(lambda c: c.put(site.url("streamed.bin"), stream=stream()))
    assert sent == sum(map(len, pieces))
    assert_same_bytes(site.read("streamed.bin"), b"".join(pieces))


# -- listing -----------------------------------------------------------------------------


def test_list_names(site: Site) -> None:
    site.write("dir/b.txt", b"b")
    site.write("dir/a.txt", b"a")
    site.mkdir("dir/c")

    async def go(c: GridFTPClient) -> tuple[list[str], list[str]]:
        return await c.list(site.url("dir/")), await c.list(site.url("dir"))

    assert site.run(go) == (["a.txt", "b.txt", "c"], ["a.txt", "b.txt", "c"])


def test_list_an_empty_directory(site: Site) -> None:
    site.mkdir("empty")
    assert site.run(lambda c: c.list(site.url("empty/"))) == []


def test_list_details(site: Site) -> None:
    site.write("dir/new.bin", b"x" * 5000, mode=0o640)
    old = site.write("dir/old.txt", b"old", mode=0o604)
    os.utime(old, (1_600_000_000, 1_600_000_000))  # 2020-09-13 12:26:40 UTC
    site.mkdir("dir/sub", mode=0o750)
    now = time.time()
    result = site.run(lambda c: c.list(site.url("dir/"), details=True))
    assert [e.name for e in result] == ["new.bin", "old.txt", "sub"]
    new, old_entry, sub = result
    assert (new.size, new.type, new.permissions) == (5000, "file", "0640"), new
    assert new.modified is not None and abs(new.modified - now) < 120, new
    assert old_entry == Entry("old.txt", 3, "file", "0604", 1_600_000_000.0), old_entry
    assert (sub.type, sub.permissions) == ("dir", "0750"), sub
    assert sub.modified is not None and abs(sub.modified - now) < 120, sub


# -- directories and names ---------------------------------------------------------------


def test_mkdir_makes_parents_and_accepts_an_existing_directory(site: Site) -> None:
    async def go(c: GridFTPClient) -> None:
        await c.mkdir(site.url("a/b/c"))
        await c.mkdir(site.url("a/b/c"))  # already there: not an error
        await c.mkdir(site.url("a/b/c/d"), parents=False)

    site.run(go)
    assert (site.directory / "a/b/c/d").is_dir()


def test_rmdir(site: Site) -> None:
    site.mkdir("empty")
    site.mkdir("other")
    site.run(lambda c: c.rmdir(site.url("empty")))
    assert sorted(os.listdir(site.directory)) == ["other"]


def test_delete(site: Site) -> None:
    site.write("gone.txt", b"1")
    site.write("kept.txt", b"2")
    site.run(lambda c: c.delete(site.url("gone.txt")))
    assert sorted(os.listdir(site.directory)) == ["kept.txt"]


def test_rmtree_removes_a_nested_tree(site: Site) -> None:
    for name in ("tree/f1", "tree/d1/f2", "tree/d1/d2/f3", "tree/d1/d2/d3/f4", "kept/f5"):
        site.write(name, name.encode())
    site.mkdir("tree/d1/d2/empty")
    site.mkdir("tree/empty")
    site.run(lambda c: c.rmtree(site.url("tree")))
    assert sorted(os.listdir(site.directory)) == ["kept"]
    assert (site.directory / "kept/f5").read_bytes() == b"kept/f5"


def test_move(site: Site) -> None:
    site.write("from.txt", b"moving")
    site.mkdir("into")
    site.run(lambda c: c.move(site.url("from.txt"), site.url("into/to.txt")))
    assert not (site.directory / "from.txt").exists()
    assert site.read("into/to.txt") == b"moving"


def test_exists(site: Site) -> None:
    site.write("file.txt", b"here")
    site.mkdir("dir")

    async def go(c: GridFTPClient) -> list[bool]:
        return [await c.exists(site.url(name))
                for name in ("file.txt", "dir", "dir/", "missing", "missing/child")]

    assert site.run(go) == [True, True, True, False, False]


def test_size(site: Site) -> None:
    site.write("some.bin", random_bytes(123_457))
    site.write("empty.bin", b"")

    async def go(c: GridFTPClient) -> tuple[int, int]:
        return await c.size(site.url("some.bin")), await c.size(site.url("empty.bin"))

    assert site.run(go) == (123_457, 0)


# -- checksums ---------------------------------------------------------------------------


def expected_checksum(algorithm: str, data: bytes) -> str:
    if algorithm == "adler32":
        return f"{zlib.adler32(data):08x}"
    return hashlib.new(algorithm, data).hexdigest()


@pytest.mark.parametrize("algorithm", sorted(CHECKSUM_ALGORITHMS))
def test_checksum(site: Site, algorithm: str) -> None:
    # "abc" has an adler32 with a leading zero (024d0127), which must be kept
    payloads = {"small.txt": b"abc", "large.bin": random_bytes(MiB + 1)}
    for name, data in payloads.items():
        site.write(name, data)

    async def go(c: GridFTPClient) -> list[tuple[str | None, str]]:
        return [(await c.server_checksum(site.url(name), algorithm),
                 await c.checksum(site.url(name), algorithm)) for name in payloads]

    result = site.run(go)
    for (server_side, checksum), data in zip(result, payloads.values(), strict=True):
        expected = expected_checksum(algorithm, data)
        # this server's CKSM offers all five algorithms, so None would mean it was not used
        assert server_side is not None and server_side.lower() == expected
        assert checksum == expected


@pytest.fixture(scope="module")
def server_without_cksm(tmp_path_factory: pytest.TempPathFactory
                        ) -> Iterator[gridftp.GridFTPServer]:
    """A real anonymous ftp:// server that refuses the CKSM command."""
    with gridftp.running_server(tmp_path_factory.mktemp("no-cksm"),
                                disabled_commands=("CKSM",)) as server:
        yield server


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("algorithm", sorted(CHECKSUM_ALGORITHMS))
def test_checksum_streams_the_file_when_the_server_has_none(
        request: pytest.FixtureRequest, server_without_cksm: gridftp.GridFTPServer,
        served_root: Path, backend: str, algorithm: str) -> None:
    data = random_bytes(2 * MiB + 1)
    with make_site(request, server_without_cksm, backend, served_root) as site:
        site.write("blob.bin", data)

        async def go(c: GridFTPClient) -> tuple[str | None, str]:
            return (await c.server_checksum(site.url("blob.bin"), algorithm),
                    await c.checksum(site.url("blob.bin"), algorithm))

        on_server, found = site.run(go)
    assert on_server is None, f"the server refuses CKSM, yet it answered {on_server!r}"
    assert found == expected_checksum(algorithm, data)


def test_unknown_checksum_algorithm_is_refused_before_connecting(site: Site) -> None:
    nowhere = f"{site.scheme}://127.0.0.1:{gridftp.unused_port()}/tmp/x"
    with pytest.raises(ValueError, match="crc32"):
        site.run(lambda c: c.checksum(nowhere, "crc32"))


# -- errors ------------------------------------------------------------------------------


def control_raises(site: Site, error: type[GridFTPError],
                   scenario: Callable[[GridFTPClient], Awaitable[object]]) -> None:
    """``scenario`` raises ``error``."""
    with pytest.raises(error):
        site.run(scenario)


def test_missing_file_is_not_found(site: Site, tmp_path: Path) -> None:
    missing = site.url("missing.bin")
    with pytest.raises(NotFoundError) as caught:
        site.run(lambda c: c.get(missing))
    assert caught.value.url == missing
    with pytest.raises(NotFoundError):
        site.run(lambda c: c.get(missing, callback=lambda chunk: None))
    with pytest.raises(NotFoundError):
        site.run(lambda c: c.get(missing, path=tmp_path / "copy.bin"))
    assert os.listdir(tmp_path) == []
    control_raises(site, NotFoundError, lambda c: c.size(missing))
    control_raises(site, NotFoundError, lambda c: c.delete(missing))
    control_raises(site, NotFoundError, lambda c: c.list(missing + "/"))


@pytest.mark.parametrize("greet", [False, True], ids=["silent", "greets-then-stalls"])
def test_get_times_out_on_a_server_that_never_answers(site: Site, greet: bool) -> None:
    site.write("after.txt", b"still usable")

    async def go(c: GridFTPClient) -> tuple[float, bytes]:
        with gridftp.BlackHole(greet) as hole:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await c.get(hole.url(site.scheme), timeout=SHORT_TIMEOUT)
            took = time.monotonic() - started
            assert hole.accepted, "the client never connected"
        return took, await c.get(site.url("after.txt"))

    took, after = site.run(go)
    assert SHORT_TIMEOUT * 0.9 <= took <= SHORT_TIMEOUT + TIMEOUT_SLACK, \
        f"TimeoutError after {took:.1f} s with a timeout of {SHORT_TIMEOUT} s"
    assert after == b"still usable"


def test_control_operation_times_out_on_a_server_that_never_answers(site: Site) -> None:
    site.write("after.txt", b"12345")

    async def go(c: GridFTPClient) -> tuple[float, int]:
        with gridftp.BlackHole(greet=True) as hole:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await c.size(hole.url(site.scheme))
            took = time.monotonic() - started
        return took, await c.size(site.url("after.txt"))

    took, size = site.run(go, timeout=SHORT_TIMEOUT)  # the client's default timeout
    assert SHORT_TIMEOUT * 0.9 <= took <= SHORT_TIMEOUT + TIMEOUT_SLACK, took
    assert size == 5


def test_connection_refused(site: Site) -> None:
    nowhere = f"{site.scheme}://127.0.0.1:{gridftp.unused_port()}/tmp/x"
    with pytest.raises(ConnectionError):
        site.run(lambda c: c.get(nowhere))
    control_raises(site, ConnectionError, lambda c: c.size(nowhere))


# -- one large file ----------------------------------------------------------------------

# on loopback each combination takes seconds (data channels are not encrypted)
LARGE = 1024 * MiB


def test_large_file_streams_through_both_ways(site: Site) -> None:
    total = LARGE
    block = random_bytes(MiB)
    url = site.url("large.bin")

    async def generated() -> AsyncIterator[bytes]:
        for offset in range(0, total, MiB):
            # every block differs, so a chunk delivered twice or out of order shows
            yield (offset.to_bytes(8, "big") + block[8:])[:total - offset]

    def expected() -> str:
        h = hashlib.sha512()
        for offset in range(0, total, MiB):
            h.update((offset.to_bytes(8, "big") + block[8:])[:total - offset])
        return h.hexdigest()

    async def go(c: GridFTPClient) -> tuple[int, str]:
        sent = await c.put(url, stream=generated())
        hasher = hashlib.sha512()
        await c.get(url, callback=hasher.update)
        return sent, hasher.hexdigest()

    sent, received = site.run(go, timeout=600, guard=1200)
    want = expected()
    assert sent == total
    assert (site.directory / "large.bin").stat().st_size == total
    assert received == want, "the file came back different"
    on_server = site.run(lambda c: c.server_checksum(url, "sha512"), timeout=600)
    assert on_server is not None and on_server.lower() == want, on_server
