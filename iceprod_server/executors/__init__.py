"""Named thread pools for blocking work, and the database runner built on them.

Nothing blocking runs on the event loop: database units of work go through
:class:`~iceprod_server.executors.database.Database` (the ``db`` pool, and on SQLite the
writer thread of :mod:`~iceprod_server.executors.writer`), and filesystem work through
``Services.run_fs`` on the ``fs`` pool, each awaited by the coroutine that needs it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from iceprod_server.config import Config


class Executors:
    """The process's thread pools, sized from the configuration."""

    def __init__(self, config: Config) -> None:
        self.db = ThreadPoolExecutor(config.db_threads, thread_name_prefix="db")
        self.fs = ThreadPoolExecutor(config.fs_threads, thread_name_prefix="fs")
        # blocking calls into the Globus library (handle set-up and tear-down)
        self.gsiftp = ThreadPoolExecutor(config.gsiftp_threads, thread_name_prefix="gsiftp")

    def shutdown(self) -> None:
        self.db.shutdown(wait=True, cancel_futures=True)
        self.fs.shutdown(wait=True, cancel_futures=True)
        self.gsiftp.shutdown(wait=True, cancel_futures=True)
