"""The SQLite writer: one thread per process runs every write unit, in group commits.

SQLite lets one connection write at a time. With a pool of threads each opening its own
``BEGIN IMMEDIATE``, all but one sleep in SQLite's busy handler, which sleeps in steps, so
most of the time nobody writes. Here the units that change the database go to a queue;
the writer thread takes every unit waiting, opens one transaction, runs each unit in its
own ``SAVEPOINT`` (a unit that raises rolls back only its own changes and gets its error),
commits once, and only then answers the callers. Reads stay on the pool (WAL readers do
not wait for the writer).

Several processes on one SQLite file still work: each has its own writer, and they queue
on the busy timeout as before. When the group's ``BEGIN`` fails, or its ``COMMIT`` fails
on the lock (another process held it past the timeout: SQLite then has committed
nothing), nothing of the group was kept, and each unit runs again on its own through
:func:`run_unit`, with its retries. A ``COMMIT`` that fails for another reason leaves the
group's outcome unknown: each caller gets -32006, and nothing runs again.

Each unit carries its caller's :class:`~iceprod_server.executors.outcome.Ticket`. A unit
whose caller gave up before the group's COMMIT is not committed: the group rolls back and
runs again without it, so the -32005 its caller got stays true. Whatever a unit raises,
the thread goes on; a thread that ended anyway is started again by the next unit.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from iceprod_server.errors import OutcomeUnknown, Unavailable
from iceprod_server.executors.outcome import Ticket

log = logging.getLogger(__name__)

# at most this many units share one transaction
MAX_GROUP = 200


@dataclass
class _Unit:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    context: contextvars.Context
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    ticket: Ticket
    outcome: tuple[bool, Any] = field(default=(False, None))


class _GroupFailed(Exception):
    """The group's transaction cannot go on; every unit of it runs again on its own."""


def _answer(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # the caller stopped waiting (its bounded wait ran out)
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class Writer:
    """Runs write units of one process on one thread, many units per transaction."""

    def __init__(self, engine: Engine, run_alone: Callable[..., Any],
                 unknown: Callable[[BaseException], BaseException] = lambda e: OutcomeUnknown(),
                 no_connection: Callable[[BaseException], BaseException] = lambda e: Unavailable(),
                 commit_refused: Callable[[DBAPIError], bool] = lambda e: False) -> None:
        self.engine = engine
        # run_alone(fn, *args, ticket=..., **kwargs): one unit in its own transaction,
        # with retries
        self.run_alone = run_alone
        # the errors told to callers, and which COMMIT errors committed nothing (from
        # executors.database, which knows the drivers' words)
        self._unknown = unknown
        self._no_connection = no_connection
        self._commit_refused = commit_refused
        self._queue: queue.SimpleQueue[_Unit | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.groups = 0  # transactions committed, for the tests and the curious
        self.units = 0

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...],
               kwargs: dict[str, Any], ticket: Ticket) -> asyncio.Future[Any]:
        """Queue a unit; the future gets its result once the transaction committed."""
        loop = asyncio.get_running_loop()
        unit = _Unit(fn, args, kwargs, contextvars.copy_context(), loop, loop.create_future(),
                     ticket)
        thread = self._thread
        if thread is None or not thread.is_alive():
            with self._lock:
                if self._thread is thread:
                    if thread is not None:
                        log.error("the writer thread had ended; starting it again")
                    self._thread = threading.Thread(target=self._loop, name="db-writer",
                                                    daemon=True)
                    self._thread.start()
        self._queue.put(unit)
        return unit.future

    def stop(self, timeout: float = 10.0) -> None:
        """Run what is queued, then end the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            stopping = False
            while len(group) < MAX_GROUP:
                try:
                    unit = self._queue.get_nowait()
                except queue.Empty:
                    break
                if unit is None:
                    stopping = True
                    break
                group.append(unit)
            self._run_group(group)
            if stopping:
                return

    def _run_group(self, group: list[_Unit]) -> None:
        live = [u for u in group if not u.ticket.abandoned]
        if not live:
            return
        try:
            again = self._commit_group(live)
        except PoolTimeout as e:
            log.warning("no connection for a group of %d units: %s", len(live), e)
            for unit in live:
                unit.outcome = (False, self._no_connection(e))
        except _Committing as e:
            log.warning("COMMIT of a group of %d units failed; they may have committed: %s",
                        len(live), e.error.orig)
            for unit in live:
                unit.outcome = (False, self._unknown(e.error))
        except (DBAPIError, _GroupFailed) as e:
            log.info("group of %d units failed (%s): running them one by one", len(live), e)
            for unit in live:
                unit.outcome = unit.context.run(self._alone, unit)
        except BaseException as e:  # noqa: BLE001 - every caller must get an answer
            log.exception("group of %d units failed", len(live))
            for unit in live:
                unit.outcome = (False, _plain(e))
        else:
            if again is not None:
                # a caller gave up while the group ran: the rest run without its unit
                self._run_group(again)
                return
            self.groups += 1
            self.units += len(live)
        for unit in live:
            ok, value = unit.outcome
            try:
                unit.loop.call_soon_threadsafe(_answer, unit.future, ok, value)
            except RuntimeError:  # its event loop is closed: nobody is waiting
                log.debug("no loop to answer %s", getattr(unit.fn, "__name__", unit.fn))

    def _commit_group(self, live: list[_Unit]) -> list[_Unit] | None:
        """Run the group in one transaction and commit it; returns the units to run
        again, without the ones whose callers gave up, when there were such."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(iceprod_write=True)
            transaction = conn.begin()
            try:
                for unit in live:
                    unit.outcome = unit.context.run(_in_savepoint, conn, unit)
                # a unit that failed left nothing behind (its savepoint rolled back)
                kept = [u for u in live if u.outcome[0]]
                gone = [u for u in kept if not u.ticket.begin_commit()]
                if gone:
                    transaction.rollback()
                    for unit in kept:
                        unit.ticket.commit_refused()
                    return [u for u in live if u not in gone]
            except BaseException:
                transaction.rollback()
                for unit in live:
                    unit.ticket.commit_refused()
                raise
            try:
                transaction.commit()
            except DBAPIError as e:
                if not self._commit_refused(e):
                    # the tickets stay "committing": a caller whose time runs out now is
                    # told -32006 too
                    raise _Committing(e) from e
                for unit in live:
                    unit.ticket.commit_refused()
                raise  # nothing was kept: each unit runs again alone
        return None

    def _alone(self, unit: _Unit) -> tuple[bool, Any]:
        try:
            return True, self.run_alone(unit.fn, *unit.args, ticket=unit.ticket,
                                        **unit.kwargs)
        except Exception as e:  # noqa: BLE001 - handed to the caller
            return False, e
        except BaseException as e:  # noqa: BLE001 - handed to the caller, the thread goes on
            return False, _plain(e)


class _Committing(Exception):
    """The group's COMMIT failed in a way that does not say whether it committed."""

    def __init__(self, error: DBAPIError) -> None:
        super().__init__(str(error.orig))
        self.error = error


def _plain(e: BaseException) -> Exception:
    """What a caller may be handed: an exception that is not one that stops threads or
    the event loop (SystemExit, KeyboardInterrupt)."""
    if isinstance(e, Exception):
        return e
    return RuntimeError(f"a unit of work raised {type(e).__name__}: {e}")


def _in_savepoint(conn: Any, unit: _Unit) -> tuple[bool, Any]:
    try:
        with Session(bind=conn, expire_on_commit=False,
                     join_transaction_mode="create_savepoint") as session:
            with session.begin():
                return True, unit.fn(session, *unit.args, **unit.kwargs)
    except DBAPIError as e:
        if e.connection_invalidated or _breaks_group(e):
            raise _GroupFailed(str(e.orig)) from e
        return False, e
    except Exception as e:  # noqa: BLE001 - handed to the caller
        return False, e
    except BaseException as e:  # noqa: BLE001 - its savepoint rolled back; the group goes on
        return False, _plain(e)


def _breaks_group(err: DBAPIError) -> bool:
    """Errors after which the transaction itself cannot go on (or the unit would succeed
    when run again): locks, I/O, a database gone away."""
    msg = str(err.orig).lower()
    return any(word in msg for word in ("locked", "disk i/o", "unable to open", "readonly",
                                        "database or disk is full", "not an error"))
