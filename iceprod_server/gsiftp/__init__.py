"""An async GridFTP client (ftp:// and gsiftp:// URLs) whose operations never block the
event loop.

Two backends implement :class:`~iceprod_server.gsiftp.base.GridFTPClient`: ``library``
calls the Globus C client library (``libglobus_ftp_client``) through ctypes, with its
callbacks resolving asyncio futures through ``loop.call_soon_threadsafe``; ``url-copy``
runs ``globus-url-copy`` as asyncio subprocesses and speaks the FTP control channel itself
for the commands that program lacks.
"""

from __future__ import annotations

from concurrent.futures import Executor

from iceprod_server.gsiftp.base import CHECKSUM_ALGORITHMS, Entry, GridFTPClient, Hasher
from iceprod_server.gsiftp.errors import (
    ConnectionError,
    GridFTPError,
    NotFoundError,
    PermissionDeniedError,
    TimeoutError,
    UnsupportedError,
)

BACKENDS = ("library", "url-copy")

__all__ = [
    "BACKENDS", "CHECKSUM_ALGORITHMS", "ConnectionError", "Entry", "GridFTPClient",
    "GridFTPError", "Hasher", "NotFoundError", "PermissionDeniedError", "TimeoutError",
    "UnsupportedError", "make_client",
]


def make_client(backend: str = "library", *, timeout: float = 600.0,
                executor: Executor | None = None) -> GridFTPClient:
    """A client of the named backend. ``executor`` runs the library backend's blocking
    set-up calls (the ``gsiftp`` pool); without one it makes its own."""
    if backend == "library":
        from iceprod_server.gsiftp.library import LibraryClient
        return LibraryClient(timeout=timeout, executor=executor)
    if backend == "url-copy":
        from iceprod_server.gsiftp.urlcopy import UrlCopyClient
        return UrlCopyClient(timeout=timeout)
    raise ValueError(f"unknown GridFTP backend {backend!r}; choose from {BACKENDS}")
