"""The SQLite writer: write units of one process share transactions, each in its own
savepoint, so one unit's error undoes only that unit; callers are answered after the
commit; a second writer on the same file (another process) still gets its turn; no free
connection is -32005 (nothing was tried), and a unit that raises what ends threads
(SystemExit) gets its caller an error and leaves the writer working."""

from __future__ import annotations

import asyncio
import contextvars
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from iceprod_server.db.engine import make_engine
from iceprod_server.errors import UNAVAILABLE, Unavailable
from iceprod_server.executors.database import Database

REQUEST = contextvars.ContextVar("REQUEST", default="")


def _make_table(s: Session) -> None:
    s.execute(text("CREATE TABLE IF NOT EXISTS notes (n INTEGER PRIMARY KEY, who TEXT)"))


def _note(s: Session, n: int, fail: bool = False) -> str:
    s.execute(text("INSERT INTO notes (n, who) VALUES (:n, :who)"),
              {"n": n, "who": REQUEST.get()})
    if fail:
        raise ValueError(f"unit {n} fails after writing")
    return REQUEST.get()


def _notes(s: Session) -> dict[int, str]:
    return {int(n): str(who) for n, who in s.execute(text("SELECT n, who FROM notes"))}


async def _call(db: Database, n: int, fail: bool) -> str:
    REQUEST.set(f"request-{n}")  # each task has its own context, as each request does
    return await db.write(_note, n, fail)


def test_units_share_commits_and_an_error_undoes_only_its_unit(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    pool = ThreadPoolExecutor(4)
    db = Database(engine, pool, timeout=30)
    assert db.writer is not None
    failing = {7, 30}

    async def main() -> list[str | BaseException]:
        await db.write(_make_table)
        return await asyncio.gather(*(_call(db, n, n in failing) for n in range(60)),
                                    return_exceptions=True)

    try:
        answers = asyncio.run(main())
        for n, answer in enumerate(answers):
            if n in failing:
                assert isinstance(answer, ValueError)
            else:
                # the unit ran in its caller's context
                assert answer == f"request-{n}"
        with Session(engine) as s:
            kept = _notes(s)
        assert sorted(kept) == [n for n in range(60) if n not in failing]
        assert all(who == f"request-{n}" for n, who in kept.items())
        # 61 units arrived together: far fewer transactions than units
        assert db.writer.units == 61
        assert db.writer.groups < 30
    finally:
        db.close()
        pool.shutdown()
        engine.dispose()


def test_two_writers_on_one_file_both_get_their_turn(sqlite_url: str) -> None:
    engines = [make_engine(sqlite_url, timeout=30) for _ in range(2)]
    pool = ThreadPoolExecutor(4)
    dbs = [Database(e, pool, timeout=30) for e in engines]

    async def main() -> None:
        await dbs[0].write(_make_table)
        await asyncio.gather(*(_call(dbs[n % 2], n, False) for n in range(200)))

    try:
        asyncio.run(main())
        with Session(engines[0]) as s:
            assert sorted(_notes(s)) == list(range(200))
    finally:
        for db in dbs:
            db.close()
        pool.shutdown()
        for e in engines:
            e.dispose()


@pytest.mark.parametrize("units", [1, 3])
def test_close_runs_what_is_queued(sqlite_url: str, units: int) -> None:
    engine = make_engine(sqlite_url)
    pool = ThreadPoolExecutor(2)
    db = Database(engine, pool, timeout=30)

    async def main() -> None:
        await db.write(_make_table)
        futures = [asyncio.ensure_future(_call(db, n, False)) for n in range(units)]
        await asyncio.sleep(0)  # the calls are queued
        db.close()
        await asyncio.gather(*futures)

    try:
        asyncio.run(main())
        with Session(engine) as s:
            assert sorted(_notes(s)) == list(range(units))
    finally:
        pool.shutdown()
        engine.dispose()


def test_no_free_connection_for_the_writer_is_unavailable(sqlite_url: str) -> None:
    """Every connection of the pool is in use for longer than the pool's timeout: the
    writer's callers get -32005 (nothing was tried), not an internal error."""
    engine = make_engine(sqlite_url, pool_size=1, timeout=1.0)  # two connections
    pool = ThreadPoolExecutor(2)
    db = Database(engine, pool, timeout=40)
    held = [engine.connect() for _ in range(2)]

    async def main() -> BaseException | None:
        try:
            await db.write(_make_table)
        except BaseException as e:  # noqa: BLE001 - what the caller got
            return e
        return None

    try:
        error = asyncio.run(main())
        assert isinstance(error, Unavailable) and error.code == UNAVAILABLE, repr(error)
    finally:
        for conn in held:
            conn.close()
        db.close()
        pool.shutdown()
        engine.dispose()


def _exit(s: Session) -> None:
    _make_table(s)
    raise SystemExit("a unit that would end its thread")


def test_a_unit_raising_systemexit_leaves_the_writer_working(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    pool = ThreadPoolExecutor(2)
    db = Database(engine, pool, timeout=5)

    async def main() -> tuple[BaseException | None, str]:
        error = None
        try:
            await db.write(_exit)
        except Exception as e:  # noqa: BLE001 - what the caller got
            error = e
        await db.write(_make_table)
        return error, await _call(db, 1, False)

    try:
        error, after = asyncio.run(main())
        assert isinstance(error, RuntimeError) and "SystemExit" in str(error), repr(error)
        assert after == "request-1"
        with Session(engine) as s:
            assert _notes(s) == {1: "request-1"}
    finally:
        db.close()
        pool.shutdown()
        engine.dispose()
