"""The GridFTP backend on the Globus C client library (``libglobus_ftp_client``).

Every method is one or a few library operations run by :class:`.runner.Runner` (pooled
handles, deadlines, aborts, typed errors); gets and listings read their data through
:class:`.transfer.Reader`, except gets to a file, which :class:`.filesink.FileSink` writes
from the library's threads; puts write their data through :class:`.transfer.Writer`. Local
file work goes through the executor, never the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import re
import tempfile
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from concurrent.futures import Executor
from contextlib import AbstractAsyncContextManager
from typing import Literal, overload

from iceprod_server.gsiftp import errors
from iceprod_server.gsiftp.base import CHECKSUM_ALGORITHMS, ChunkCallback, Entry, GridFTPClient
from iceprod_server.gsiftp.filesink import FileSink
from iceprod_server.gsiftp.globus import spacious_buffer
from iceprod_server.gsiftp.listing import parse_listing
from iceprod_server.gsiftp.runner import Runner, globus_url, typed_error
from iceprod_server.gsiftp.transfer import (
    BUFFER_SIZE,
    ChunkConsumer,
    Operation,
    Reader,
    Writer,
    on_complete,
)

log = logging.getLogger(__name__)

_HEX = re.compile(r"[0-9a-f]+")
_UNSUPPORTED_CHECKSUM = re.compile(r"\b50[0-4]\b|unknown checksum|unsupported|not supported|"
                                   r"not implemented|unknown command", re.IGNORECASE)


class LibraryClient(GridFTPClient):
    """GridFTP through ctypes calls into the Globus FTP client library."""

    def __init__(self, timeout: float = 600.0, executor: Executor | None = None) -> None:
        super().__init__(timeout)
        self._runner = Runner(executor)
        self._executor = self._runner.executor

    def _deadline(self, url: str, timeout: float | None) -> AbstractAsyncContextManager[None]:
        return self._runner.deadline(url, self._timeout(timeout))

    async def _read(self, url: str, name: str, consume: ChunkConsumer) -> None:
        """Run a get or a listing, feeding its data to ``consume`` in order."""
        reader: Reader | None = None

        def start(op: Operation) -> int:
            nonlocal reader
            reader = Reader(op)
            fn = getattr(op.globus.ftp, f"globus_ftp_client_{name}")
            extra = [None] if name == "get" else []  # get takes a restart marker
            return int(fn(op.handle.address, globus_url(url), op.handle.attr, *extra,
                          on_complete, op.arg))

        async def body(op: Operation) -> None:
            assert reader is not None
            await reader.pump(consume)

        await self._runner.run(url, start, body)
        assert reader is not None
        if reader.error:
            raise typed_error(url, reader.error)

    # -- transfers -----------------------------------------------------------------------

    @overload
    async def get(self, url: str, *, path: None = None, callback: None = None,
                  timeout: float | None = None) -> bytes: ...

    @overload
    async def get(self, url: str, *, path: str | os.PathLike[str] | None = None,
                  callback: ChunkCallback | None = None,
                  timeout: float | None = None) -> bytes | None: ...

    async def get(self, url: str, *, path: str | os.PathLike[str] | None = None,
                  callback: ChunkCallback | None = None,
                  timeout: float | None = None) -> bytes | None:
        if path is not None and callback is not None:
            raise ValueError("give path or callback, not both")
        async with self._deadline(url, timeout):
            if callback is not None:
                await self._read(url, "get", callback)
                return None
            if path is not None:
                await self._get_to_file(url, os.fspath(path))
                return None
            chunks: list[bytes] = []
            await self._read(url, "get", chunks.append)
            return b"".join(chunks)

    async def _get_to_file(self, url: str, path: str) -> None:
        loop = asyncio.get_running_loop()
        fd, temp = await loop.run_in_executor(self._executor, _make_temp, path)
        sink: FileSink | None = None

        def start(op: Operation) -> int:
            nonlocal sink
            sink = FileSink(op, fd)
            return int(op.globus.ftp.globus_ftp_client_get(
                op.handle.address, globus_url(url), op.handle.attr, None, on_complete, op.arg))

        async def body(op: Operation) -> None:
            assert sink is not None
            await sink.run()

        # the file is closed only through the sink once it exists: the sink then stops
        # writing, even for a callback of an operation given up after its abort
        try:
            await self._runner.run(url, start, body)
            assert sink is not None
            if sink.error:
                raise typed_error(url, sink.error)
            if missing := sink.missing():
                raise errors.GridFTPError(url, missing)
            await loop.run_in_executor(self._executor, _close_and_rename, sink.close, temp,
                                       path)
        except BaseException:
            close = sink.close if sink is not None else functools.partial(os.close, fd)
            await asyncio.shield(loop.run_in_executor(self._executor, _close_and_remove,
                                                      close, temp))
            raise

    async def put(self, url: str, *, path: str | os.PathLike[str] | None = None,
                  data: bytes | None = None, stream: AsyncIterable[bytes] | None = None,
                  timeout: float | None = None) -> int:
        if sum(source is not None for source in (path, data, stream)) != 1:
            raise ValueError("give exactly one of path, data or stream")
        if path is not None:
            source = self._read_file(os.fspath(path))
        elif data is not None:
            source = _slices(data)
        else:
            assert stream is not None
            source = _rechunk(stream)
        writer: Writer | None = None

        def start(op: Operation) -> int:
            nonlocal writer
            writer = Writer(op)
            return int(op.globus.ftp.globus_ftp_client_put(
                op.handle.address, globus_url(url), op.handle.attr, None, on_complete, op.arg))

        async def body(op: Operation) -> None:
            assert writer is not None
            async with contextlib.aclosing(source):
                async for chunk in source:
                    if not await writer.write(chunk):
                        return
            await writer.finish()

        async with self._deadline(url, timeout):
            await self._runner.run(url, start, body)
        assert writer is not None
        if writer.error:
            raise typed_error(url, writer.error)
        return writer.sent

    async def _read_file(self, path: str) -> AsyncGenerator[bytes | memoryview, None]:
        loop = asyncio.get_running_loop()
        file = await loop.run_in_executor(self._executor, open, path, "rb")
        try:
            while chunk := await loop.run_in_executor(self._executor, file.read, BUFFER_SIZE):
                yield chunk
        finally:
            await loop.run_in_executor(self._executor, file.close)

    # -- directories and names -----------------------------------------------------------

    @overload
    async def list(self, url: str, *, details: Literal[False] = False,
                   timeout: float | None = None) -> list[str]: ...

    @overload
    async def list(self, url: str, *, details: Literal[True],
                   timeout: float | None = None) -> list[Entry]: ...

    async def list(self, url: str, *, details: bool = False,
                   timeout: float | None = None) -> list[str] | list[Entry]:
        chunks: list[bytes] = []
        async with self._deadline(url, timeout):
            await self._read(url, "machine_list", chunks.append)
        entries = parse_listing(b"".join(chunks).decode("utf-8", "replace"))
        if details:
            return entries
        return sorted(entry.name for entry in entries)

    async def mkdir(self, url: str, *, parents: bool = True,
                    timeout: float | None = None) -> None:
        async with self._deadline(url, timeout):
            if not parents:
                await self._runner.run(url, self._runner.call("mkdir", url))
                return
            if await self._exists(url):
                return
            for prefix in _path_prefixes(url):
                if await self._exists(prefix):
                    continue
                try:
                    await self._runner.run(prefix, self._runner.call("mkdir", prefix))
                except errors.GridFTPError:
                    # made meanwhile by someone else: that is what we wanted
                    if not await self._exists(prefix):
                        raise

    async def rmdir(self, url: str, *, timeout: float | None = None) -> None:
        async with self._deadline(url, timeout):
            await self._runner.run(url, self._runner.call("rmdir", url))

    async def delete(self, url: str, *, timeout: float | None = None) -> None:
        async with self._deadline(url, timeout):
            await self._runner.run(url, self._runner.call("delete", url))

    async def move(self, src: str, dest: str, *, timeout: float | None = None) -> None:
        def start(op: Operation) -> int:
            return int(op.globus.ftp.globus_ftp_client_move(
                op.handle.address, globus_url(src), globus_url(dest), op.handle.attr,
                on_complete, op.arg))

        async with self._deadline(src, timeout):
            try:
                await self._runner.run(src, start)
            except errors.GridFTPError as exc:
                # the server says only "501 Invalid command arguments" for a missing source
                if type(exc) is errors.GridFTPError and not await self._exists(src):
                    raise errors.NotFoundError(src, exc.detail) from exc
                raise

    async def exists(self, url: str, *, timeout: float | None = None) -> bool:
        async with self._deadline(url, timeout):
            return await self._exists(url)

    async def _exists(self, url: str) -> bool:
        try:
            await self._runner.run(url, self._runner.call("exists", url))
        except errors.NotFoundError:
            return False
        return True

    async def size(self, url: str, *, timeout: float | None = None) -> int:
        size = ctypes.c_int64(-1)

        def start(op: Operation) -> int:
            op.keep.append(size)
            return self._runner.call("size", url, ctypes.addressof(size))(op)

        async with self._deadline(url, timeout):
            await self._runner.run(url, start)
        return size.value

    async def server_checksum(self, url: str, algorithm: str, *,
                              timeout: float | None = None) -> str | None:
        if algorithm not in CHECKSUM_ALGORITHMS:
            raise ValueError(f"unknown checksum algorithm {algorithm!r}; "
                             f"choose from {sorted(CHECKSUM_ALGORITHMS)}")
        answer = spacious_buffer()

        def start(op: Operation) -> int:
            op.keep.append(answer)
            algorithm_name = CHECKSUM_ALGORITHMS[algorithm].encode()
            return self._runner.call("cksm", url, answer, 0, -1, algorithm_name)(op)

        try:
            async with self._deadline(url, timeout):
                await self._runner.run(url, start)
        except errors.GridFTPError as exc:
            if type(exc) is errors.GridFTPError and _UNSUPPORTED_CHECKSUM.search(exc.detail):
                log.debug("%s: no server checksum %s: %s", url, algorithm, exc.detail)
                return None
            raise
        found = answer.value.decode("ascii", "replace").strip().lower()
        if not _HEX.fullmatch(found):
            raise errors.GridFTPError(url, f"unexpected CKSM answer {found[:200]!r}")
        return found

    # -- life cycle ----------------------------------------------------------------------

    async def close(self) -> None:
        await self._runner.close()


def _path_prefixes(url: str) -> list[str]:
    """``ftp://h/a/b/c`` -> ``ftp://h/a``, ``ftp://h/a/b``, ``ftp://h/a/b/c``."""
    scheme, _, rest = url.partition("://")
    host, _, path = rest.partition("/")
    parts = [part for part in path.split("/") if part]
    return [f"{scheme}://{host}/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)]


async def _slices(data: bytes) -> AsyncGenerator[bytes | memoryview, None]:
    view = memoryview(data)
    for start in range(0, len(view), BUFFER_SIZE):
        yield view[start:start + BUFFER_SIZE]


async def _rechunk(stream: AsyncIterable[bytes]) -> AsyncGenerator[bytes | memoryview, None]:
    """The stream's chunks, small ones joined up to BUFFER_SIZE so that they do not each
    become a network write."""
    pending = bytearray()
    async for chunk in stream:
        if not pending and len(chunk) >= BUFFER_SIZE:
            yield chunk
            continue
        pending += chunk
        if len(pending) >= BUFFER_SIZE:
            yield bytes(pending)
            pending.clear()
    if pending:
        yield bytes(pending)


def _make_temp(path: str) -> tuple[int, str]:
    directory, name = os.path.split(os.path.abspath(path))
    return tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=directory)


def _close_and_rename(close: Callable[[], None], temp: str, path: str) -> None:
    close()
    os.replace(temp, path)


def _close_and_remove(close: Callable[[], None], temp: str) -> None:
    try:
        close()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
