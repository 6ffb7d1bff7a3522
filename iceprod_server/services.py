"""The long-lived services of one server process, reached by handlers and RPC methods."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from iceprod_server.auth import Authenticator
from iceprod_server.config import Config, ConfigError
from iceprod_server.db import tasks
from iceprod_server.db.claims import ClaimBatcher
from iceprod_server.db.engine import make_engine
from iceprod_server.executors import Executors
from iceprod_server.executors.batcher import Batcher
from iceprod_server.executors.database import Database
from iceprod_server.gsiftp import GridFTPClient, make_client
from iceprod_server.live import LiveHub


class InFlight:
    """Counts the requests a process is answering, so that a stopping server can wait for
    them to finish."""

    def __init__(self) -> None:
        self.count = 0
        # set when the server stops accepting: answers then close their connections
        self.draining = False
        self.last_start = 0.0  # monotonic time at which the latest request began
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self.last_start = time.monotonic()
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count <= 0:
            self.count = 0
            self._idle.set()

    async def wait_idle(self, timeout: float, quiet: float = 0.0) -> bool:
        """True once no request is in flight and none began for ``quiet`` seconds (or
        the time is up with none in flight); False if some still are after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return False
            wait = min(self.last_start + quiet, deadline) - time.monotonic()
            if wait <= 0:
                return True
            await asyncio.sleep(wait)


class Services:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.cookie_secret = config.cookie_secret or self._read_cookie_secret()
        self.engine = make_engine(config.database_url, pool_size=config.db_pool_size,
                                  pool_recycle=config.db_pool_recycle,
                                  timeout=config.db_timeout)
        self.executors = Executors(config)
        self.db = Database(self.engine, self.executors.db, config.db_timeout)
        self.auth = Authenticator(self.db, config.auth_cache_seconds)
        self.claims = ClaimBatcher(self.db.write)
        self.finishes: Batcher[tasks.FinishRequest, dict[str, Any]] = Batcher(
            self.db.write, tasks.finish_batch)
        self.requests = InFlight()
        self.live = LiveHub()
        self._wake: Callable[[], None] | None = None
        # how many scheduler passes this process has finished, and the seconds since the
        # last one ended well (None: no scheduler)
        self.scheduler_passes: Callable[[], int] | None = None
        self.scheduler_age: Callable[[], float] | None = None
        self._gsiftp: GridFTPClient | None = None

    def _read_cookie_secret(self) -> str:
        """The secret that signs login cookies. Every process of a deployment must share
        it, or a login made through one is refused by the next: a made-up one is never
        used."""
        path = self.config.path("cookie_secret")
        try:
            secret = path.read_text().strip()
        except OSError as e:
            secret = ""
            why = f"cannot read {path}: {e.strerror or e}"
        else:
            why = f"{path} is empty"
        if not secret:
            raise ConfigError(
                f"no cookie secret ({why}) and the cookie_secret option is not set: run "
                f"`iceprod-server init --data-dir {self.config.data_dir}`, which writes it, "
                f"or set cookie_secret, the same in every server process")
        return secret

    def on_wake_scheduler(self, wake: Callable[[], None]) -> None:
        self._wake = wake

    def wake_scheduler(self) -> None:
        """Ask the scheduler for an early pass (after a submission or a completion)."""
        if self._wake is not None:
            self._wake()

    async def run_fs(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run blocking filesystem work on the ``fs`` pool."""
        return await asyncio.get_running_loop().run_in_executor(self.executors.fs, fn, *args)

    @property
    def gsiftp(self) -> GridFTPClient:
        """The GridFTP client of the configured backend, made on first use."""
        if self._gsiftp is None:
            self._gsiftp = make_client(self.config.gsiftp_backend,
                                       timeout=self.config.gsiftp_timeout,
                                       executor=self.executors.gsiftp)
        return self._gsiftp

    async def close_gsiftp(self) -> None:
        """Close the GridFTP client, if one was made (on the loop it was used on)."""
        if self._gsiftp is not None:
            await self._gsiftp.close()
            self._gsiftp = None

    async def aclose(self) -> None:
        """Close what needs the event loop (the GridFTP client, the database probes), then
        :meth:`close`."""
        await self.close_gsiftp()
        self.db.stop_probing()
        self.close()

    def close(self) -> None:
        self.db.close()
        self.executors.shutdown()
        self.engine.dispose()
