"""Runs units of database work on the ``db`` thread pool (writes on SQLite: the writer).

A unit of work is a function ``fn(session, *args)`` from :mod:`iceprod_server.db`. One hop
onto the pool opens a session, runs the function in one transaction, commits and returns
plain data. Lock conflicts (SQLite busy, InnoDB deadlock or lock wait timeout) roll back and
run the unit again, and so does a connection that turns out to be gone before the unit
reached its commit (once, on a new connection).

What the caller is told when it does not get its result is true of the database:

- -32005 (:class:`~iceprod_server.errors.Unavailable`): nothing was committed, nor will
  be. The unit never reached COMMIT (retries or the caller's ``db_timeout`` ran out, the
  database was unreachable, no connection was free), or the database refused the COMMIT;
  a unit still running when its caller gives up rolls back instead of committing
  (:mod:`iceprod_server.executors.outcome`).
- -32006 (:class:`~iceprod_server.errors.OutcomeUnknown`): the unit was in its COMMIT when
  the caller's time ran out, or the connection was lost during the COMMIT.

After a timeout or a database found gone, calls get -32005 at once until a probe passes
(:mod:`iceprod_server.executors.gate`). Reads only ever get -32005: they commit nothing.
What the driver said (hosts, ports, users) goes to the log, under the request's id, never
into an answer.

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
from iceprod_server.db import probe
from iceprod_server.db.engine import make_probe_engine
from iceprod_server.errors import OutcomeUnknown, Unavailable
from iceprod_server.executors.gate import Gate
from iceprod_server.executors.outcome import Ticket
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
# a probe's waits (connecting, each read), in seconds
PROBE_TIMEOUT = 1.0

NOTHING_CHANGED = "nothing was changed: try again"
UNKNOWN = ("the database did not confirm the outcome: the call may or may not have taken "
           "effect. Repeat it with the same request_key, which answers the first result "
           "if it did, or check before repeating it")


def unavailable(what: str, err: BaseException | None = None) -> Unavailable:
    """-32005 saying ``what`` happened and that nothing changed; the driver's words go
    only to ``detail``."""
    e = Unavailable(f"{what}; {NOTHING_CHANGED}")
    e.detail = str(getattr(err, "orig", None) or err or "")
    return e


def outcome_unknown(err: BaseException | None = None) -> OutcomeUnknown:
    e = OutcomeUnknown(UNKNOWN)
    e.detail = str(getattr(err, "orig", None) or err or "")
    return e


def _retryable(err: DBAPIError) -> bool:
    orig = err.orig
    msg = str(orig).lower()
    if "database is locked" in msg or "database table is locked" in msg:
        return True
    args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
    return bool(args) and args[0] in _MYSQL_RETRY


def commit_refused(err: DBAPIError) -> bool:
    """The database answered the COMMIT with an error, so nothing was committed: SQLite
    busy, or any MariaDB server error (numbers below 2000; 2000 and up are the client's
    own: the connection went away, and with it the answer)."""
    if err.connection_invalidated:
        return False
    number = _error_number(err)
    if number is not None:
        return number < 2000
    msg = str(err.orig).lower()
    return "database is locked" in msg or "database table is locked" in msg


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__name__", "a unit of work")


def run_unit(engine: Engine, fn: Callable[..., T], *args: Any, write: bool = True,
             timeout: float = 30.0, ticket: Ticket | None = None, **kwargs: Any) -> T:
    """Run ``fn(session, *args, **kwargs)`` in one transaction, here, in this thread.

    With a ``ticket``, the unit commits only if its caller is still waiting."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    reconnected = False
    while True:
        if ticket is not None and ticket.abandoned:
            raise unavailable("the database did not answer in time")
        committing = False
        attempt_started = time.monotonic()
        try:
            with engine.connect() as conn:
                conn = conn.execution_options(iceprod_write=write)
                with Session(bind=conn, expire_on_commit=False) as session:
                    transaction = session.begin()
                    result = fn(session, *args, **kwargs)
                    if ticket is not None and not ticket.begin_commit():
                        # the caller was told -32005: keep it true
                        transaction.rollback()
                        log.info("%s rolled back: its caller stopped waiting", _name(fn))
                        raise unavailable("the database did not answer in time")
                    committing = True
                    transaction.commit()
                    return result
        except (OperationalError, DBAPIError) as e:
            if committing:
                if write and not commit_refused(e):
                    log.warning("connection lost during the COMMIT of %s; it may have "
                                "committed: %s", _name(fn), e.orig)
                    raise outcome_unknown(e) from e
                if ticket is not None:
                    ticket.commit_refused()
            if (not committing and not reconnected and _error_number(e) in _MYSQL_LOST
                    and time.monotonic() - attempt_started < _LOST_AT_ONCE):
                # the connection was gone (the server had closed it): nothing of this unit
                # was committed, so it runs again once, on a new connection. A connection
                # lost after a wait (a read timeout: a frozen database, a statement run
                # too long) is not: the unit would wait as long again.
                log.info("database connection lost, running %s again on a new one: %s",
                         _name(fn), e.orig)
                reconnected = True
                continue
            if e.connection_invalidated or _is_down(e):
                log.warning("database unavailable: %s", e.orig)
                raise unavailable("the database cannot be reached", e) from e
            if _error_number(e) in _MYSQL_TOO_LONG:
                log.warning("statement stopped after %.1f s: %s", timeout, e.orig)
                raise unavailable("the database took too long", e) from e
            if not _retryable(e):
                raise
            if time.monotonic() + delay > deadline:
                log.warning("database busy, giving up after %.1f s: %s", timeout, e.orig)
                raise unavailable("the database is busy", e) from e
            metrics.DB_RETRIES.inc()
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 0.5)
        except PoolTimeout as e:
            log.warning("no database connection free for %s: %s", _name(fn), e)
            raise unavailable("no database connection was free", e) from e


def _error_number(err: DBAPIError) -> int | None:
    args: tuple[Any, ...] = tuple(getattr(err.orig, "args", ()))
    return args[0] if args and isinstance(args[0], int) else None


def _is_down(err: DBAPIError) -> bool:
    args: tuple[Any, ...] = tuple(getattr(err.orig, "args", ()))
    if args and args[0] in _MYSQL_DOWN:
        return True
    return "unable to open database file" in str(err.orig).lower()


def _select_one(s: Session) -> bool:
    s.execute(text("SELECT 1"))
    return True


class Database:
    """Awaitable database access for coroutines."""

    def __init__(self, engine: Engine, executor: ThreadPoolExecutor, timeout: float = 30.0):
        self.engine = engine
        self.executor = executor
        self.timeout = timeout
        # probes have a thread and short-lived connections of their own, so that one
        # waiting on a database that does not answer holds no pool thread or connection
        self._probe_engine = make_probe_engine(engine.url, PROBE_TIMEOUT)
        self._probe_pool = ThreadPoolExecutor(1, thread_name_prefix="db-probe")
        # SQLite: one writer thread per process, many units per transaction
        self.writer: Writer | None = None
        if engine.dialect.name == "sqlite":
            self.writer = Writer(
                engine, functools.partial(run_unit, engine, write=True, timeout=timeout),
                unknown=outcome_unknown,
                no_connection=lambda e: unavailable("no database connection was free", e),
                commit_refused=commit_refused)
            # readers do not wait for the writer (WAL): each kind fails fast on its own
            self.read_gate = Gate("reads", self._probe_reads)
            self.write_gate = Gate("writes", self._probe_writer)
        else:
            # one pool, one connection, one server: what stops one kind stops the other
            self.read_gate = self.write_gate = Gate("reads and writes", self._probe_reads)

    def stop_probing(self) -> None:
        """Stop the probes of a closed gate (the server is stopping); on the event loop."""
        self.read_gate.stop()
        self.write_gate.stop()

    def close(self) -> None:
        """Run the write units still queued, then stop the writer thread."""
        if self.writer is not None:
            self.writer.stop(self.timeout)
        self._probe_pool.shutdown(wait=False, cancel_futures=True)
        self._probe_engine.dispose()

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
             write: bool, ticket: Ticket | None) -> asyncio.Future[Any]:
        if write and self.writer is not None:
            return self.writer.submit(fn, args, kwargs, ticket or Ticket())
        # in the caller's context, so what the unit logs carries the request's id
        unit = functools.partial(run_unit, self.engine, fn, *args, write=write,
                                 timeout=self.timeout, ticket=ticket, **kwargs)
        return asyncio.get_running_loop().run_in_executor(
            self.executor, contextvars.copy_context().run, unit)

    async def _bounded(self, fn: Callable[..., Any], args: tuple[Any, ...],
                       kwargs: dict[str, Any], write: bool, timeout: float) -> Any:
        # The driver's own timeouts bound each socket wait of the thread; this bounds what
        # the caller waits, queueing for a thread included, whatever the database does.
        gate = self.write_gate if write else self.read_gate
        if gate.closed:
            try:
                await gate.admit()
            except Unavailable:
                metrics.DB_UNAVAILABLE.inc()
                raise
        ticket = Ticket() if write else None
        started = time.perf_counter()
        try:
            return await asyncio.wait_for(self._run(fn, args, kwargs, write, ticket), timeout)
        except TimeoutError as e:
            gate.close(f"{_name(fn)} did not finish within {timeout:g} s")
            if ticket is None or ticket.abandon():
                log.warning("database did not answer %s within %.1f s; it will not commit",
                            _name(fn), timeout)
                metrics.DB_UNAVAILABLE.inc()
                raise unavailable("the database did not answer in time") from e
            log.warning("%s was committing when its %.1f s ran out: outcome unknown",
                        _name(fn), timeout)
            metrics.DB_OUTCOME_UNKNOWN.inc()
            raise outcome_unknown() from e
        except Unavailable as e:
            gate.close(f"{_name(fn)}: {e.reason} ({e.detail})")
            metrics.DB_UNAVAILABLE.inc()
            raise
        except OutcomeUnknown as e:
            gate.close(f"{_name(fn)}: {e.detail}")
            metrics.DB_OUTCOME_UNKNOWN.inc()
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

    # -- probes: is the database there?

    async def _in_probe_thread(self, fn: Callable[[Engine], bool]) -> bool:
        return await asyncio.get_running_loop().run_in_executor(
            self._probe_pool, fn, self._probe_engine)

    async def _probe_reads(self) -> bool:
        return await self._in_probe_thread(probe.reads_answer)

    async def _probe_writer(self) -> bool:
        # a unit of its own through the writer thread: it is answered only if the thread
        # runs, is not stuck in a unit, and can take the write lock
        assert self.writer is not None
        result: bool = await self.writer.submit(_select_one, (), {}, Ticket())
        return result

    async def health(self, timeout: float) -> dict[str, str]:
        """What ``/healthz`` says of the database, within ``timeout`` seconds:
        ``database``, whether a new connection reads; on SQLite also ``writer``, whether
        the writer thread answers a unit of its own. Each is ``ok`` or what is wrong. A
        failing probe closes its gate; a passing one opens it."""
        if self.writer is None:
            reads = await self.read_gate.probe(timeout)
            return {"database": "ok" if reads else "unreachable"}
        reads, writes = await asyncio.gather(self.read_gate.probe(timeout),
                                             self.write_gate.probe(timeout))
        return {"database": "ok" if reads else "unreachable",
                "writer": "ok" if writes else "not answering"}
