"""The one engine factory: SQLite and MariaDB/MySQL specifics live here and nowhere else."""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

# a MariaDB connection unused for this many seconds is pinged before it is handed out
PING_AFTER_IDLE = 1.0


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def make_engine(url: str, pool_size: int = 10, pool_recycle: int = 3600,
                timeout: float = 30.0) -> Engine:
    """An engine for ``url``.

    SQLite runs in WAL mode with foreign keys on and a busy timeout. Transactions start with
    ``BEGIN IMMEDIATE`` when the connection is marked for writing (execution option
    ``iceprod_write``), so two writers queue on the busy timeout instead of failing when one
    upgrades a read lock. MariaDB/MySQL runs through mysqlclient at READ COMMITTED, with
    connect, read and write timeouts and ``max_statement_time`` of ``timeout`` seconds.
    Connections dropped by the server are replaced: one that sat unused for
    :data:`PING_AFTER_IDLE` seconds is pinged when it is taken from the pool (a busy one
    is not: the round trip would cost as much as a statement), an error that says the
    server is gone invalidates every connection of the pool, and connections are recycled
    after ``pool_recycle`` seconds. A connection goes back to the pool without another
    ROLLBACK: every unit of work ends its transaction itself (committed, or rolled back
    when it closes with one open).
    """
    if is_sqlite(url):
        engine = create_engine(
            url,
            connect_args={"timeout": timeout, "check_same_thread": False},
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_timeout=timeout,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # we issue BEGIN ourselves (below)
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            write = conn.get_execution_options().get("iceprod_write", True)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine

    parsed = _mysql_url(url)
    seconds = int(max(timeout, 1))
    engine = create_engine(
        parsed,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=pool_recycle,
        pool_reset_on_return=None,
        pool_timeout=timeout,
        isolation_level="READ COMMITTED",
        # a database that accepts connections and then never answers (stopped, a network
        # that drops packets) must not hold a thread for ever: every socket wait is bounded
        connect_args={"connect_timeout": seconds, "read_timeout": seconds,
                      "write_timeout": seconds},
    )

    @event.listens_for(engine, "connect")
    def _on_mysql_connect(dbapi_conn: Any, _record: Any) -> None:
        # a statement that runs longer than a unit of work may take is stopped by the
        # server itself (MariaDB; MySQL has no such variable and ignores the attempt)
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"SET SESSION max_statement_time = {float(timeout)}")
        except Exception as e:  # MySQL: unknown variable
            log.debug("max_statement_time not set: %s", e)
        finally:
            cur.close()

    _ping_after_idle(engine)
    return engine


def _mysql_url(url: str | URL) -> Any:
    parsed = make_url(url)
    if parsed.drivername in ("mysql", "mariadb"):
        parsed = parsed.set(drivername="mysql+mysqldb")
    query = dict(parsed.query)
    query.setdefault("charset", "utf8mb4")
    return parsed.set(query=query)


def make_probe_engine(url: str | URL, timeout: float = 1.0) -> Engine:
    """An engine whose every connection is new and whose every wait is short, for the
    probes that tell whether the database answers (:mod:`iceprod_server.db.probe`): a
    pooled connection could be one the database has already dropped, and the pool's long
    timeouts would hold the probe for ``db_timeout``."""
    if is_sqlite(url):
        return create_engine(url, poolclass=NullPool,
                             connect_args={"timeout": timeout, "check_same_thread": False})
    seconds = int(max(timeout, 1))
    engine = create_engine(_mysql_url(url), poolclass=NullPool,
                           connect_args={"connect_timeout": seconds, "read_timeout": seconds,
                                         "write_timeout": seconds})

    @event.listens_for(engine, "connect")
    def _on_probe_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"SET SESSION max_statement_time = {float(seconds)}")
        except Exception as e:  # MySQL: unknown variable
            log.debug("max_statement_time not set: %s", e)
        finally:
            cur.close()

    return engine


def _ping_after_idle(engine: Engine) -> None:
    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE:
            return
        try:
            dbapi_conn.ping()
        except Exception as e:
            # the pool then replaces the connection and tries again
            raise exc.DisconnectionError(f"connection lost while idle: {e}") from e
