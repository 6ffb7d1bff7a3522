"""Task logs kept on disk while the server is away, and sent when it is back.

The client retries a call for a while (``--retries`` with backoff) when the server does not
answer or answers -32005. A server that is away longer than that (a restart, a database
outage) would make the pilot drop the task's logs. Instead, a log whose upload fails that
way is written to the spool directory, one file per log, and the pilot's main loop sends
what the spool holds each time round, oldest first, until the server takes it.

A log that the server refuses for any other reason (the claim is gone, -32004; the task
does not exist, -32003) will never be taken, and is removed with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from iceprod_server.client import (
    CONNECTION_ERROR,
    OUTCOME_UNKNOWN,
    TRANSPORT_ERROR,
    UNAVAILABLE,
    RPCError,
)

log = logging.getLogger("iceprod_pilot")

# answers that mean "the server is not there right now": keep the log and try later. After
# -32006 the log may have been stored: sending it again adds a second copy of the same
# log, which is better than none
_AWAY = {UNAVAILABLE, OUTCOME_UNKNOWN, CONNECTION_ERROR, TRANSPORT_ERROR}


def server_away(error: RPCError) -> bool:
    return error.code in _AWAY


class LogSpool:
    """A directory of logs waiting to be uploaded."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._count = 0

    def save(self, task_id: str, name: str, data: str) -> Path:
        """Keep ``data`` (as ``upload_logfile`` takes it) for a later upload."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._count += 1
            stem = f"{os.getpid()}-{self._count:06d}"
        target = self.directory / f"{stem}.json"
        tmp = self.directory / f".{stem}.tmp"
        tmp.write_text(json.dumps({"task": task_id, "name": name, "data": data}))
        tmp.replace(target)  # whole or not at all: a crash leaves no half-written entry
        log.warning("server away: log %s of task %s kept in %s", name, task_id, target)
        return target

    def pending(self) -> list[Path]:
        try:
            return sorted(self.directory.glob("*.json"), key=lambda p: p.stat().st_mtime)
        except OSError:
            return []

    def flush(self, call: Callable[..., Any]) -> int:
        """Upload what the spool holds with ``call(method, **params)``; stop at the first
        sign that the server is still away. Returns how many logs were sent."""
        sent = 0
        with self._lock:
            for path in self.pending():
                try:
                    entry = json.loads(path.read_text())
                except (OSError, ValueError):
                    log.warning("dropping unreadable spooled log %s", path)
                    path.unlink(missing_ok=True)
                    continue
                try:
                    call("upload_logfile", task=entry["task"], name=entry["name"],
                         data=entry["data"])
                except RPCError as e:
                    if server_away(e):
                        break
                    log.warning("server refused spooled log %s of task %s: %s",
                                entry["name"], entry["task"], e)
                else:
                    sent += 1
                    log.info("sent spooled log %s of task %s", entry["name"], entry["task"])
                path.unlink(missing_ok=True)
        return sent
