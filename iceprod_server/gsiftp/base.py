"""What every GridFTP backend offers: one async client interface.

A backend implements the primitive operations; ``rmtree`` and the streaming fallback of
``checksum`` are built here from them, so both backends behave the same. Every operation
takes ``timeout`` (seconds, default the client's) and aborts the transfer when it runs out,
raising :class:`~iceprod_server.gsiftp.errors.TimeoutError`.

URLs are ``ftp://host[:port]/path`` or ``gsiftp://host[:port]/path``; a directory URL may
end in ``/``.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import os
import zlib
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Literal, overload

# the algorithms of checksum(), as named here and as the server's CKSM command names them
CHECKSUM_ALGORITHMS = {"md5": "MD5", "sha1": "SHA1", "sha256": "SHA256",
                       "sha512": "SHA512", "adler32": "ADLER32"}

# a chunk consumer: called with each received chunk in order; when it returns an
# awaitable, the next chunk is not read until it completes (flow control)
ChunkCallback = Callable[[bytes], Awaitable[None] | None]


@dataclasses.dataclass(frozen=True)
class Entry:
    """One directory entry, as ``list(url, details=True)`` gives it."""

    name: str
    size: int
    type: str  # "file", "dir", "link" or "other"
    permissions: str  # octal, e.g. "0644"; "" when the server does not say
    modified: float | None  # seconds since the epoch (UTC), None when unknown


class Hasher:
    """hashlib-like running checksum for every algorithm of ``checksum``, adler32 too."""

    def __init__(self, algorithm: str) -> None:
        if algorithm not in CHECKSUM_ALGORITHMS:
            raise ValueError(f"unknown checksum algorithm {algorithm!r}; "
                             f"choose from {sorted(CHECKSUM_ALGORITHMS)}")
        self.algorithm = algorithm
        self._adler = 1
        self._hash = None if algorithm == "adler32" else hashlib.new(algorithm)

    def update(self, chunk: bytes) -> None:
        if self._hash is None:
            self._adler = zlib.adler32(chunk, self._adler)
        else:
            self._hash.update(chunk)

    def hexdigest(self) -> str:
        if self._hash is None:
            return f"{self._adler:08x}"
        return self._hash.hexdigest()


class GridFTPClient(abc.ABC):
    """The async GridFTP client. Create it with :func:`iceprod_server.gsiftp.make_client`;
    call :meth:`close` when done."""

    def __init__(self, timeout: float = 600.0) -> None:
        self.timeout = timeout

    # -- transfers -----------------------------------------------------------------------

    @overload
    async def get(self, url: str, *, path: None = None, callback: None = None,
                  timeout: float | None = None) -> bytes: ...

    @overload
    async def get(self, url: str, *, path: str | os.PathLike[str] | None = None,
                  callback: ChunkCallback | None = None,
                  timeout: float | None = None) -> bytes | None: ...

    @abc.abstractmethod
    async def get(self, url: str, *, path: str | os.PathLike[str] | None = None,
                  callback: ChunkCallback | None = None,
                  timeout: float | None = None) -> bytes | None:
        """Download ``url``: to ``path`` (written to a temporary name beside it, renamed
        when complete, nothing left on failure), to ``callback`` chunk by chunk, or, with
        neither, into memory (returned). Returns None when ``path`` or ``callback`` is
        given."""

    @abc.abstractmethod
    async def put(self, url: str, *, path: str | os.PathLike[str] | None = None,
                  data: bytes | None = None, stream: AsyncIterable[bytes] | None = None,
                  timeout: float | None = None) -> int:
        """Upload exactly one of ``path``, ``data`` or ``stream`` to ``url`` (replacing an
        existing file); returns the number of bytes sent."""

    # -- directories and names -----------------------------------------------------------

    @overload
    async def list(self, url: str, *, details: Literal[False] = False,
                   timeout: float | None = None) -> list[str]: ...

    @overload
    async def list(self, url: str, *, details: Literal[True],
                   timeout: float | None = None) -> list[Entry]: ...

    @abc.abstractmethod
    async def list(self, url: str, *, details: bool = False,
                   timeout: float | None = None) -> list[str] | list[Entry]:
        """The entries of directory ``url`` (without ``.`` and ``..``), sorted by name:
        names, or :class:`Entry` objects with ``details``."""

    @abc.abstractmethod
    async def mkdir(self, url: str, *, parents: bool = True,
                    timeout: float | None = None) -> None:
        """Make directory ``url``; with ``parents``, also missing parents, and an existing
        directory is not an error."""

    @abc.abstractmethod
    async def rmdir(self, url: str, *, timeout: float | None = None) -> None:
        """Remove the empty directory ``url``."""

    @abc.abstractmethod
    async def delete(self, url: str, *, timeout: float | None = None) -> None:
        """Remove the file ``url``."""

    @abc.abstractmethod
    async def move(self, src: str, dest: str, *, timeout: float | None = None) -> None:
        """Rename ``src`` to ``dest`` on the same server."""

    @abc.abstractmethod
    async def exists(self, url: str, *, timeout: float | None = None) -> bool:
        """Whether a file or directory ``url`` exists."""

    @abc.abstractmethod
    async def size(self, url: str, *, timeout: float | None = None) -> int:
        """The size of file ``url`` in bytes."""

    async def checksum(self, url: str, algorithm: str = "sha512", *,
                       timeout: float | None = None) -> str:
        """The lowercase hex checksum of file ``url``: from the server's CKSM command when
        it offers the algorithm, else by streaming the file and hashing it here."""
        Hasher(algorithm)  # refuse an unknown algorithm before any network work
        found = await self.server_checksum(url, algorithm, timeout=timeout)
        if found is not None:
            return found.lower()
        hasher = Hasher(algorithm)
        await self.get(url, callback=hasher.update, timeout=timeout)
        return hasher.hexdigest()

    @abc.abstractmethod
    async def server_checksum(self, url: str, algorithm: str, *,
                              timeout: float | None = None) -> str | None:
        """The server's CKSM answer, or None when the server does not offer it (then
        :meth:`checksum` hashes the stream). Other failures raise."""

    async def rmtree(self, url: str, *, timeout: float | None = None) -> None:
        """Remove directory ``url`` and everything under it (a file URL: just the file)."""
        base = url.rstrip("/")
        entries = await self.list(base + "/", details=True, timeout=timeout)
        for entry in entries:
            child = f"{base}/{entry.name}"
            if entry.type == "dir":
                await self.rmtree(child, timeout=timeout)
            else:
                await self.delete(child, timeout=timeout)
        await self.rmdir(base, timeout=timeout)

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and handles. The client is unusable afterwards."""

    def _timeout(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout
