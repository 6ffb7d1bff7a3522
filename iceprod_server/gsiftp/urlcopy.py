"""The ``url-copy`` backend: transfers and name listings through ``globus-url-copy``
subprocesses, everything else over pooled FTP control connections of our own
(:mod:`~iceprod_server.gsiftp.ftpcontrol`; on ``gsiftp://`` authenticated with the
certificate the program uses too, :mod:`~iceprod_server.gsiftp.gsi`).

Data never passes through memory as a whole: downloads to a callback read the program's
stdout in chunks and wait for the callback before reading on, so a slow consumer stalls the
program through the pipe (its own stall timeout is off; ours covers the whole operation).
Each program runs in its own process group, killed and reaped on timeout or cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import logging
import os
import posixpath
import re
import secrets
import urllib.parse
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Literal, TypeVar, overload

from iceprod_server.gsiftp import errors, gsi, listing
from iceprod_server.gsiftp.base import CHECKSUM_ALGORITHMS, ChunkCallback, Entry, GridFTPClient
from iceprod_server.gsiftp.ftpcontrol import (
    ConnectionClosed,
    ConnectionPool,
    ControlConnection,
    Key,
    ReplyError,
)
from iceprod_server.gsiftp.program import CHUNK, Program

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_PORTS = {"ftp": 21, "gsiftp": 2811}
# what the program says when GSI authentication fails; its credential search also says
# "does not exist", which must not read as a missing remote file
_GSI_FAILURE = re.compile(r"gss_init_sec_context|GSS failure|globus_credential")
# CKSM answers meaning "not offered here" (then checksum() hashes the stream instead)
_NO_CKSM = re.compile(r"unknown checksum algorithm|not supported|unsupported|"
                      r"not implemented|not understood|unknown command", re.IGNORECASE)


class UrlCopyClient(GridFTPClient):
    """GridFTP client running ``program`` (``globus-url-copy``) for transfers."""

    def __init__(self, timeout: float = 600.0, program: str = "globus-url-copy") -> None:
        super().__init__(timeout)
        self.program = program
        self._pool = ConnectionPool()
        self._programs: set[Program] = set()
        self._closed = False

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
            raise ValueError("get takes path or callback, not both")
        if path is not None:
            await self._get_to_path(url, os.fspath(path), timeout)
            return None
        if callback is not None:
            await self._get_stream(url, callback, timeout)
            return None
        chunks: list[bytes] = []
        await self._get_stream(url, chunks.append, timeout)
        return b"".join(chunks)

    async def _get_stream(self, url: str, callback: ChunkCallback,
                          timeout: float | None) -> None:
        async with self._deadline(url, timeout), \
                self._run(url, url, "file:///dev/stdout", stdout=True) as run:
            assert run.stdout is not None
            while chunk := await run.stdout.read(CHUNK):
                result = callback(chunk)
                if inspect.isawaitable(result):
                    await result
            await run.finish()

    async def _get_to_path(self, url: str, path: str, timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        target, partial = await loop.run_in_executor(None, _local_target, path)
        try:
            async with self._deadline(url, timeout), \
                    self._run(url, url, _file_url(partial)) as run:
                await run.finish()
            await loop.run_in_executor(None, os.replace, partial, target)
        except BaseException:
            # the program creates the file before it knows the source is readable
            await asyncio.shield(loop.run_in_executor(None, _remove, partial))
            raise

    async def put(self, url: str, *, path: str | os.PathLike[str] | None = None,
                  data: bytes | None = None, stream: AsyncIterable[bytes] | None = None,
                  timeout: float | None = None) -> int:
        if sum(x is not None for x in (path, data, stream)) != 1:
            raise ValueError("put takes exactly one of path, data or stream")
        if path is not None:
            source, size = await asyncio.get_running_loop().run_in_executor(
                None, _local_file, os.fspath(path))
            async with self._deadline(url, timeout), \
                    self._run(url, _file_url(source), url) as run:
                await run.finish()
            return size
        chunks = _slices(data) if data is not None else stream
        assert chunks is not None
        async with self._deadline(url, timeout), \
                self._run(url, "file:///dev/stdin", url, stdin=True) as run:
            sent = await run.feed(chunks)
            await run.finish()
        return sent

    # -- listings ------------------------------------------------------------------------

    @overload
    async def list(self, url: str, *, details: Literal[False] = False,
                   timeout: float | None = None) -> list[str]: ...

    @overload
    async def list(self, url: str, *, details: Literal[True],
                   timeout: float | None = None) -> list[Entry]: ...

    async def list(self, url: str, *, details: bool = False,
                   timeout: float | None = None) -> list[str] | list[Entry]:
        folder = url if url.endswith("/") else url + "/"
        if details:
            async def mlsd(conn: ControlConnection, path: str) -> bytes:
                return await conn.read_data(f"MLSD {path}")
            text = await self._control(folder, mlsd, timeout)
            return listing.parse_listing(text.decode("utf-8", "surrogateescape"))
        async with self._deadline(url, timeout), \
                self._run(folder, "-list", folder, stdout=True) as run:
            assert run.stdout is not None
            out = await run.stdout.read()
            await run.finish()
        return sorted(_names(out.decode("utf-8", "surrogateescape")))

    # -- control-channel operations ------------------------------------------------------

    async def mkdir(self, url: str, *, parents: bool = True,
                    timeout: float | None = None) -> None:
        async def mkd(conn: ControlConnection, path: str) -> None:
            if parents:
                await self._makedirs(conn, url, path)
            else:
                await conn.expect(f"MKD {path}")
        await self._control(url, mkd, timeout)

    async def _makedirs(self, conn: ControlConnection, url: str, path: str) -> None:
        reply = await conn.command(f"MKD {path}")
        if 200 <= reply.code < 300:
            return
        kind = await _kind(conn, path)
        if kind == "dir":
            return
        if kind is not None:
            raise errors.GridFTPError(url, f"{path} exists and is not a directory")
        parent = posixpath.dirname(path)
        if parent == path or await _kind(conn, parent) is not None:
            raise ReplyError(f"MKD {path}", reply)
        await self._makedirs(conn, url, parent)
        again = await conn.command(f"MKD {path}")
        # another client may have made it in between
        if not 200 <= again.code < 300 and await _kind(conn, path) != "dir":
            raise ReplyError(f"MKD {path}", again)

    async def rmdir(self, url: str, *, timeout: float | None = None) -> None:
        async def rmd(conn: ControlConnection, path: str) -> None:
            await conn.expect(f"RMD {path}")
        await self._control(url, rmd, timeout)

    async def delete(self, url: str, *, timeout: float | None = None) -> None:
        async def dele(conn: ControlConnection, path: str) -> None:
            await conn.expect(f"DELE {path}")
        await self._control(url, dele, timeout)

    async def move(self, src: str, dest: str, *, timeout: float | None = None) -> None:
        src_key, _ = _target(src)
        dest_key, dest_path = _target(dest)
        if src_key != dest_key:
            raise errors.UnsupportedError(src, f"cannot move to another server ({dest})")

        async def rename(conn: ControlConnection, path: str) -> None:
            await conn.expect(f"RNFR {path}", 350)
            await conn.expect(f"RNTO {dest_path}")
        await self._control(src, rename, timeout)

    async def exists(self, url: str, *, timeout: float | None = None) -> bool:
        async def mlst(conn: ControlConnection, path: str) -> bool:
            return await _kind(conn, path) is not None
        return await self._control(url, mlst, timeout)

    async def size(self, url: str, *, timeout: float | None = None) -> int:
        async def size(conn: ControlConnection, path: str) -> int:
            reply = await conn.expect(f"SIZE {path}", 213)
            try:
                return int(reply.argument)
            except ValueError:
                raise errors.GridFTPError(url, f"odd SIZE answer: {reply.text}") from None
        return await self._control(url, size, timeout)

    async def server_checksum(self, url: str, algorithm: str, *,
                              timeout: float | None = None) -> str | None:
        if algorithm not in CHECKSUM_ALGORITHMS:
            raise ValueError(f"unknown checksum algorithm {algorithm!r}")
        name = CHECKSUM_ALGORITHMS[algorithm]

        async def cksm(conn: ControlConnection, path: str) -> str | None:
            reply = await conn.command(f"CKSM {name} 0 -1 {path}")
            if reply.code == 213:
                return reply.argument.lower()
            if 500 <= reply.code < 600 and _NO_CKSM.search(reply.text):
                return None
            raise ReplyError("CKSM", reply)
        return await self._control(url, cksm, timeout)

    async def close(self) -> None:
        self._closed = True
        for program in list(self._programs):
            program.kill()
        await self._pool.close()

    # -- machinery -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _deadline(self, url: str, timeout: float | None) -> AsyncIterator[None]:
        seconds = self._timeout(timeout)
        if self._closed:
            raise errors.GridFTPError(url, "the client is closed")
        limit = asyncio.timeout(seconds)
        try:
            async with limit:
                yield
        except TimeoutError:
            if not limit.expired():
                raise
            raise errors.TimeoutError(url, f"no result within {seconds:g} s") from None

    @contextlib.asynccontextmanager
    async def _run(self, url: str, *args: str, stdin: bool = False,
                   stdout: bool = False) -> AsyncIterator[_Run]:
        """``program -q ARGS`` in its own process group; killed and reaped on the way out
        unless it ran to its end."""
        command = [self.program, "-q", "-st", "0", *args]
        log.debug("running %s", " ".join(command))
        try:
            program = await Program.start(command, stdin=stdin, stdout=stdout)
        except OSError as exc:
            raise errors.UnsupportedError(url, f"cannot run {self.program}: {exc}") from exc
        self._programs.add(program)
        try:
            yield _Run(url, program)
        finally:
            self._programs.discard(program)
            await asyncio.shield(program.reap())

    async def _control(self, url: str, operation: Callable[[ControlConnection, str],
                                                           Awaitable[T]],
                       timeout: float | None) -> T:
        """Run ``operation(connection, path)`` on a pooled control connection. A pooled
        connection the server has meanwhile dropped is replaced once."""
        key, path = _target(url)
        async with self._deadline(url, timeout):
            for attempt in range(2):
                conn: ControlConnection | None = None
                reused = healthy = False
                try:
                    conn, reused = await self._pool.acquire(key, lambda: _open(key, url))
                    result = await operation(conn, path)
                    healthy = True
                    return result
                except ReplyError as exc:
                    healthy = conn is not None and exc.reply.code != 421
                    if not healthy and reused and attempt == 0:
                        continue
                    raise listing.classify(url, exc.reply.text) from None
                except errors.GridFTPError:
                    healthy = True
                    raise
                except (ConnectionClosed, OSError) as exc:
                    if reused and attempt == 0:
                        continue
                    raise errors.ConnectionError(url, str(exc)) from None
                finally:
                    if conn is not None:
                        self._pool.release(key, conn, healthy)
        raise AssertionError("unreachable")  # pragma: no cover


class _Run:
    """A running program and the URL its errors are about."""

    def __init__(self, url: str, program: Program) -> None:
        self.url = url
        self.program = program
        self.stdout = program.stdout

    async def feed(self, chunks: AsyncIterable[bytes]) -> int:
        return await self.program.feed(chunks)

    async def finish(self) -> None:
        """Wait for the end; raise the typed error for what the program printed."""
        code, message = await self.program.finish()
        if code != 0:
            raise _classify(self.url, message or f"globus-url-copy ended with {code}")
        if self.program.input_broken:
            raise errors.ConnectionError(self.url, "globus-url-copy stopped reading its input")


def _classify(url: str, message: str) -> errors.GridFTPError:
    if _GSI_FAILURE.search(message):
        return errors.PermissionDeniedError(url, " ".join(message.split()))
    return listing.classify(url, message)


async def _open(key: Key, url: str) -> ControlConnection:
    scheme, host, port, user = key
    try:
        conn = await ControlConnection.connect(host, port)
    except OSError as exc:
        raise errors.ConnectionError(url, f"cannot connect to {host}:{port}: {exc}") from exc
    try:
        if scheme == "gsiftp":
            await gsi.authenticate(conn, url)
        else:
            password = urllib.parse.unquote(urllib.parse.urlsplit(url).password or "")
            await conn.login(user, password or "iceprod@")
    except BaseException:
        conn.abort()
        raise
    return conn


async def _kind(conn: ControlConnection, path: str) -> str | None:
    """The type of ``path`` from MLST ("file", "dir", ...), None when it does not exist."""
    reply = await conn.command(f"MLST {path}")
    if reply.code == 250:
        for line in reply.lines[1:-1]:
            entry = listing.parse_facts(line.lstrip(" "))
            if entry is not None:
                return entry.type
        return "dir"  # only cdir facts: the path names the directory itself
    if isinstance(listing.classify("", reply.text), errors.NotFoundError):
        return None
    raise ReplyError(f"MLST {path}", reply)


def _target(url: str) -> tuple[Key, str]:
    """The pool key and the server path of ``url`` (percent-decoded, no trailing ``/``)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise errors.UnsupportedError(url, "not an ftp:// or gsiftp:// URL")
    path = urllib.parse.unquote(parts.path) or "/"
    if "\r" in path or "\n" in path:
        raise errors.GridFTPError(url, "line break in path")
    if len(path) > 1:
        path = path.rstrip("/") or "/"
    user = urllib.parse.unquote(parts.username or "anonymous")
    return (parts.scheme, parts.hostname, parts.port or DEFAULT_PORTS[parts.scheme], user), path


def _names(listing_text: str) -> list[str]:
    """Names from ``globus-url-copy -list``: the URL, then ``    name `` per entry (a
    trailing ``/`` marks a directory)."""
    names = []
    for line in listing_text.splitlines()[1:]:
        if line.startswith("    ") and line.strip():
            name = line[4:]
            name = name[:-1] if name.endswith(" ") else name
            name = name.rstrip("/")
            if name not in (".", ".."):
                names.append(name)
    return names


def _file_url(path: str) -> str:
    # the program percent-decodes file URLs too
    return "file://" + urllib.parse.quote(path)


async def _slices(data: bytes) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(view), CHUNK):
        yield bytes(view[start:start + CHUNK])


def _local_target(path: str) -> tuple[str, str]:
    """The absolute ``path`` and a fresh temporary name beside it. A missing folder is
    the caller's problem, not a missing remote file, so it is said here."""
    target = os.path.abspath(path)
    folder, name = os.path.split(target)
    if not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, "no such local directory", folder)
    return target, os.path.join(folder, f".{name}.{secrets.token_hex(6)}.part")


def _local_file(path: str) -> tuple[str, int]:
    return os.path.abspath(path), os.path.getsize(path)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
