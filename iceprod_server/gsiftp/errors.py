"""Typed errors of the GridFTP client. Every operation raises one of these, never a bare
library or subprocess error, so callers (the file proxy) can map them to HTTP codes."""

from __future__ import annotations


class GridFTPError(Exception):
    """An operation failed; ``url`` is what it was about, ``detail`` what the server or
    the library said."""

    def __init__(self, url: str, detail: str = "") -> None:
        super().__init__(f"{url}: {detail}" if detail else url)
        self.url = url
        self.detail = detail


class NotFoundError(GridFTPError):
    """The file or directory does not exist (FTP 550 "No such file", 450)."""


class PermissionDeniedError(GridFTPError):
    """The server refused: login, authentication or file permissions (530, 550 perm)."""


class TimeoutError(GridFTPError):  # noqa: A001 - the module's own name for it
    """The operation took longer than its timeout and was aborted."""


class ConnectionError(GridFTPError):  # noqa: A001
    """The server could not be reached, or the connection broke mid-operation."""


class UnsupportedError(GridFTPError):
    """The backend or the server cannot do this operation on this URL."""
