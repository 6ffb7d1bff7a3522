"""Logs kept in files under ``<data-dir>/logs`` (those over ``log_inline_max``): written
whole (a pilot's upload, a site's log that came in one change) or piece by piece (a site's
log that came in pieces). Blocking: run every function here on the ``fs`` pool.

A log file appears under its final name only once it is complete (a temporary file,
renamed), so a reader never sees half of one; a write that fails leaves nothing behind.
"""

from __future__ import annotations

import os
from pathlib import Path

from iceprod_server.errors import Unavailable
from iceprod_server.files.storage import storage_full


def _target(root: Path, task_id: str, name: str) -> Path:
    folder = root / "logs" / task_id[:6] / task_id
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}.{os.urandom(4).hex()}.log"


def _full(e: OSError) -> None:
    if storage_full(e):
        # the sender may try again later (a pilot or a site keeps the log meanwhile)
        raise Unavailable("no space left for the log on the server") from e


def write_log_file(root: Path, task_id: str, name: str, text: bytes) -> str:
    """Write a whole log; its path relative to ``root``."""
    target = _target(root, task_id, name)
    tmp = target.with_suffix(".tmp")
    try:
        tmp.write_bytes(text)
        tmp.replace(target)
    except OSError as e:
        tmp.unlink(missing_ok=True)  # nothing half-written stays
        _full(e)
        raise
    return str(target.relative_to(root))


def remove_log_file(root: Path, relpath: str) -> None:
    """Remove a log file written here that turned out not to be needed."""
    path = (root / relpath).resolve()
    if path.is_relative_to(root.resolve()):
        path.unlink(missing_ok=True)


class LogFileWriter:
    """A log written in parts: ``append`` each, then ``commit`` (or ``abort``)."""

    def __init__(self, root: Path, task_id: str, name: str) -> None:
        self.root = root
        self.target = _target(root, task_id, name)
        self.tmp = self.target.with_suffix(".tmp")
        self.size = 0
        try:
            self._file = self.tmp.open("wb")
        except OSError as e:
            _full(e)
            raise

    def append(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except OSError as e:
            self.abort()
            _full(e)
            raise
        self.size += len(data)

    def commit(self) -> str:
        """Make the log visible under its final name; its path relative to the root."""
        try:
            self._file.close()
            self.tmp.replace(self.target)
        except OSError as e:
            self.abort()
            _full(e)
            raise
        return str(self.target.relative_to(self.root))

    def abort(self) -> None:
        self._file.close()
        self.tmp.unlink(missing_ok=True)
        try:
            self.tmp.parent.rmdir()  # the task's folder, if this was its only log
        except OSError:
            pass
