"""``/log/<task_id>/<name>``: the full newest log of a task, as plain text.

A log kept in a file under the data directory (the big ones) is streamed: each chunk is
read on the ``fs`` pool and flushed before the next is read, so neither the loop nor the
memory sees the whole file. A log kept in its database row is at most ``log_inline_max``
bytes and is written as it is. ``?attempt=N`` picks the log of one attempt.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import IO, Any

import tornado.iostream
import tornado.web

from iceprod_server.db import page_reads
from iceprod_server.errors import NotFound, Unavailable
from iceprod_server.handlers.base import PageHandler

log = logging.getLogger(__name__)

CHUNK = 64 * 1024


def open_log(data_dir: Path, relpath: str) -> IO[bytes] | None:
    """The log file opened for reading, or None if it is missing or outside the data
    directory. Blocking: call it on the ``fs`` pool."""
    root = data_dir.resolve()
    path = (root / relpath).resolve()
    if not path.is_relative_to(root):
        return None
    try:
        return path.open("rb")
    except OSError:
        return None


class LogHandler(PageHandler):
    async def get(self, task_id: str, name: str) -> None:
        attempt_arg = self.get_query_argument("attempt", "")
        attempt = None
        if attempt_arg:
            if not attempt_arg.isdigit():
                raise tornado.web.HTTPError(400, "attempt must be a number")
            attempt = int(attempt_arg)
        try:
            source = await self.services.db.read(page_reads.log_source, task_id, name, attempt)
        except NotFound as e:
            raise tornado.web.HTTPError(404, "%s", e.reason) from e
        except Unavailable as e:
            raise tornado.web.HTTPError(503, "%s", e.reason) from e
        if source["path"] is not None:
            await self.stream_file(source["path"])
        else:
            self.start_text()
            data: bytes = (source["data"] or "").encode("utf-8")
            for start in range(0, len(data), CHUNK):
                self.write(data[start:start + CHUNK])

    def start_text(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        # a log may hold markup: never let a browser run it as a page
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", "default-src 'none'; sandbox")

    async def stream_file(self, relpath: str) -> None:
        run_fs = self.services.run_fs
        f: IO[bytes] | None = await run_fs(open_log, self.services.config.path(), relpath)
        if f is None:
            raise tornado.web.HTTPError(404, "the log file is missing")
        try:
            self.start_text()
            while True:
                chunk: bytes = await run_fs(f.read, CHUNK)
                if not chunk:
                    break
                self.write(chunk)
                await self.flush()
        except tornado.iostream.StreamClosedError:
            log.debug("log reader went away: %s", relpath)
        finally:
            await run_fs(f.close)


def routes() -> list[Any]:
    return [(r"/log/([^/]+)/([^/]+)", LogHandler)]
