"""Runs units of database work on the ``db`` thread pool (writes on SQLite: the writer).

A unit of work is a function ``fn(session, *args)`` from :mod:`iceprod_server.db`. One hop
onto the pool opens a session, runs the function in one transaction, commits and returns
plain data. Lock conflicts (SQLite busy, InnoDB deadlock or lock wait timeout) roll back and
run the unit again, and so does a connection that turns out to be gone before the unit
reached its commit (once, on a new connection); once the retries or the timeout run out,
or the database is unreachable, the caller gets :class:`~iceprod_server.errors.Unavailable`
(-32005, safe to retry).

On SQLite, write units go to the process's one writer thread instead
(:mod:`iceprod_server.executors.writer`), which commits every unit waiting in one
transaction, each in its own savepoint.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from iceprod_server import metrics
from iceprod_server.errors import Unavailable
from iceprod_server.executors.writer import Writer

log = logging.getLogger(__name__)
T = TypeVar("T")

# MySQL error numbers worth running the unit again for
_MYSQL_RETRY = {1205, 1213}  # lock wait timeout, deadlock
_MYSQL_DOWN = {2002, 2003, 2006, 2013}  # cannot connect, server gone away, lost connection
_MYSQL_LOST = {2006, 2013}  # a connection that worked is gone
# a unit whose connection was found gone within this many seconds runs again (the read
# timeout is at least a second, so a timed-out unit never does)
_LOST_AT_ONCE = 0.5
# the statement ran past max_statement_time (MariaDB) / max_execution_time (MySQL)
_MYSQL_TOO_LONG = {1969, 3024}


def _retryable(err: DBAPIError) -> bool:
    orig = err.orig
    msg = str(orig).lower()
    if "database is locked" in msg or "database table is locked" in msg:
        return True
    args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
    return bool(args) and args[0] in _MYSQL_RETRY


def run_unit(engine: Engine, fn: Callable[..., T], *args: Any, write: bool = True,
             timeout: float = 30.0, **kwargs: Any) -> T:
    """Run ``fn(session, *args, **kwargs)`` in one transaction, here, in this thread."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    reconnected = False
    while True:
        committing = False
        attempt_started = time.monotonic()
        try:
            with engine.connect() as conn:
                conn = conn.execution_options(iceprod_write=write)
                with Session(bind=conn, expire_on_commit=False) as session:
                    with session.begin():
                        result = fn(session, *args, **kwargs)
                        committing = True
                    return result
        except (OperationalError, DBAPIError) as e:
            if (not committing and not reconnected and _error_number(e) in _MYSQL_LOST
                    and time.monotonic() - attempt_started < _LOST_AT_ONCE):
                # the connection was gone (the server had closed it): nothing of this unit
                # was committed, so it runs again once, on a new connection. A connection
                # lost after a wait (a read timeout: a frozen database, a statement run
                # too long) is not: the unit would wait as long again.
                log.info("database connection lost, running %s again on a new one: %s",
                         getattr(fn, "__name__", "a unit of work"), e.orig)
                reconnected = True
                continue
            if e.connection_invalidated or _is_down(e):
                log.warning("database unavailable: %s", e.orig)
                raise Unavailable("database unavailable", {"detail": str(e.orig)}) from e
            if _error_number(e) in _MYSQL_TOO_LONG:
                log.warning("statement stopped after %.1f s: %s", timeout, e.orig)
                raise Unavailable("database busy, try again", {"detail": str(e.orig)}) from e
            if not _retryable(e):
                raise
            if time.monotonic() + delay > deadline:
                log.warning("database busy, giving up after %.1f s: %s", timeout, e.orig)
                raise Unavailable("database busy, try again", {"detail": str(e.orig)}) from e
            metrics.DB_RETRIES.inc()
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 0.5)
        except PoolTimeout as e:
            raise Unavailable("no database connection available, try again") from e


def _error_number(err: DBAPIError) -> int | None:
    args: tuple[Any, ...] = tuple(getattr(err.orig, "args", ()))
    return args[0] if args and isinstance(args[0], int) else None


def _is_down(err: DBAPIError) -> bool:
    args: tuple[Any, ...] = tuple(getattr(err.orig, "args", ()))
    if args and args[0] in _MYSQL_DOWN:
        return True
    return "unable to open database file" in str(err.orig).lower()


def _select_one(s: Session) -> None:
    s.execute(text("SELECT 1"))


class Database:
    """Awaitable database access for coroutines."""

    def __init__(self, engine: Engine, executor: ThreadPoolExecutor, timeout: float = 30.0):
        self.engine = engine
        self.executor = executor
        self.timeout = timeout
        self._ping: asyncio.Future[None] | None = None
        # SQLite: one writer thread per process, many units per transaction
        self.writer: Writer | None = None
        if engine.dialect.name == "sqlite":
            self.writer = Writer(engine, functools.partial(run_unit, engine, write=True,
                                                           timeout=timeout))

    def close(self) -> None:
        """Run the write units still queued, then stop the writer thread."""
        if self.writer is not None:
            self.writer.stop(self.timeout)

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
             write: bool) -> asyncio.Future[Any]:
        if write and self.writer is not None:
            return self.writer.submit(fn, args, kwargs)
        # in the caller's context, so what the unit logs carries the request's id
        unit = functools.partial(run_unit, self.engine, fn, *args, write=write,
                                 timeout=self.timeout, **kwargs)
        return asyncio.get_running_loop().run_in_executor(
            self.executor, contextvars.copy_context().run, unit)

    async def _bounded(self, fn: Callable[..., Any], args: tuple[Any, ...],
                       kwargs: dict[str, Any], write: bool, timeout: float) -> Any:
        # The driver's own timeouts bound each socket wait of the thread; this bounds what
        # the caller waits, queueing for a thread included, whatever the database does.
        # A unit still running when it ends finishes (or fails) on its own; the caller
        # was told -32005, which means "safe to retry".
        started = time.perf_counter()
        try:
            return await asyncio.wait_for(self._run(fn, args, kwargs, write), timeout)
        except TimeoutError as e:
            log.warning("database did not answer %s within %.1f s",
                        getattr(fn, "__name__", "a unit of work"), timeout)
            metrics.DB_UNAVAILABLE.inc()
            raise Unavailable(f"database did not answer within {timeout:g} s, try again"
                              ) from e
        except Unavailable:
            metrics.DB_UNAVAILABLE.inc()
            raise
        finally:
            metrics.DB_UNIT_SECONDS.labels(kind="write" if write else "read").observe(
                time.perf_counter() - started)

    async def write(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a unit of work that changes the database."""
        result: T = await self._bounded(fn, args, kwargs, True, self.timeout)
        return result

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a read-only unit of work (on SQLite it does not take the write lock)."""
        result: T = await self._bounded(fn, args, kwargs, False, self.timeout)
        return result

    async def ping(self, timeout: float) -> bool:
        """Whether the database answers ``SELECT 1`` within ``timeout`` seconds.

        At most one ping is in flight: while one waits on a database that does not
        answer, later calls wait on the same one instead of taking more threads."""
        if self._ping is None or self._ping.done():
            self._ping = asyncio.ensure_future(self._bounded(_select_one, (), {}, False,
                                                             self.timeout))
            self._ping.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            await asyncio.wait_for(asyncio.shield(self._ping), timeout)
        except (Unavailable, TimeoutError):
            return False
        return True
