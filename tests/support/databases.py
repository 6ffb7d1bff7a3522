"""Throwaway databases for tests: a SQLite file, or a fresh MariaDB database.

MariaDB is reached as root without a password on 127.0.0.1:3306 (what ``make test`` sets
up). When it is not reachable the MariaDB half of the suite fails with a message saying
so, unless ``ICEPROD_TEST_SKIP_MARIADB=1`` is set, in which case it is skipped.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy.pool import NullPool

MARIADB_HOST = os.environ.get("ICEPROD_TEST_MARIADB_HOST", "127.0.0.1")
MARIADB_PORT = int(os.environ.get("ICEPROD_TEST_MARIADB_PORT", "3306"))
SKIP_MARIADB = os.environ.get("ICEPROD_TEST_SKIP_MARIADB", "") == "1"
BACKENDS = ("sqlite", "mariadb")


def _mariadb_admin() -> Any:
    import MySQLdb

    try:
        return MySQLdb.connect(host=MARIADB_HOST, port=MARIADB_PORT, user="root", passwd="",
                               connect_timeout=5)
    except MySQLdb.Error as e:
        message = (f"MariaDB is not reachable as root@{MARIADB_HOST}:{MARIADB_PORT} without a "
                   f"password ({e}); start it (`make test` does) or set "
                   "ICEPROD_TEST_SKIP_MARIADB=1 to skip the MariaDB half of the suite")
        if SKIP_MARIADB:
            pytest.skip("ICEPROD_TEST_SKIP_MARIADB=1: " + message)
        pytest.fail(message, pytrace=False)


@contextmanager
def mariadb_database() -> Iterator[str]:
    """A new, empty database ``iceprod_t_<random>``, dropped afterwards; yields its URL."""
    if SKIP_MARIADB:
        pytest.skip("ICEPROD_TEST_SKIP_MARIADB=1 is set")
    name = "iceprod_t_" + secrets.token_hex(6)
    conn = _mariadb_admin()
    try:
        conn.cursor().execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 "
                              "COLLATE utf8mb4_unicode_ci")
    finally:
        conn.close()
    try:
        yield f"mysql+mysqldb://root@{MARIADB_HOST}:{MARIADB_PORT}/{name}"
    finally:
        conn = _mariadb_admin()
        try:
            conn.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()


@contextmanager
def throwaway_database(backend: str, directory: Path) -> Iterator[str]:
    """A database URL for ``backend`` ("sqlite" or "mariadb") that nothing else uses."""
    if backend == "sqlite":
        directory.mkdir(parents=True, exist_ok=True)
        yield "sqlite:///" + str(directory / f"iceprod-{secrets.token_hex(4)}.db")
    elif backend == "mariadb":
        with mariadb_database() as url:
            yield url
    else:
        raise ValueError(f"unknown backend {backend!r}")


def backend_of(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "mariadb"


@contextmanager
def connect(url: str) -> Iterator[sqlalchemy.Connection]:
    """A plain connection to the database a server uses, for looking at its rows."""
    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def query(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    with connect(url) as conn:
        return [tuple(r) for r in conn.execute(sqlalchemy.text(sql), params)]


def scalar(url: str, sql: str, **params: Any) -> Any:
    rows = query(url, sql, **params)
    return rows[0][0] if rows else None


def row_counts(url: str) -> dict[str, int]:
    """How many rows every table holds: a snapshot to compare before and after."""
    with connect(url) as conn:
        tables = sorted(sqlalchemy.inspect(conn).get_table_names())
        return {t: int(conn.execute(sqlalchemy.text(f"SELECT COUNT(*) FROM {t}")).scalar_one())
                for t in tables}


_HOLD_WRITE_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


class SQLiteWriteLock:
    """Another process that holds the write lock of a SQLite file (``BEGIN IMMEDIATE``)
    until :meth:`release`: every writer of the file waits, readers go on (WAL)."""

    def __init__(self, url: str) -> None:
        self.path = url.removeprefix("sqlite:///")
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> SQLiteWriteLock:
        self.proc = subprocess.Popen([sys.executable, "-c", _HOLD_WRITE_LOCK, self.path],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "locked", f"the lock holder said {line!r}"
        return self

    def release(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.stdin is not None:
            proc.stdin.write("\n")
            proc.stdin.flush()
        proc.wait(timeout=30)

    def __exit__(self, *_exc: object) -> None:
        self.release()
