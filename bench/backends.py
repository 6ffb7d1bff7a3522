"""A fresh server installation per scenario: a data directory and its database.

SQLite lives in the data directory. MariaDB gets a throwaway database
``iceprod_bench_<random>`` on 127.0.0.1:3306 (user root, no password), dropped when the
scenario ends. Either way the schema is made by ``iceprod-server init``, exactly as an
operator would, and a pilot passkey by ``iceprod-server passkey issue``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text

from bench.procs import BenchError, Cleanup, run_cli, temp_dir

MARIADB_SERVER = "mysql+mysqldb://root@127.0.0.1:3306"
BACKENDS = ("sqlite", "mariadb")


@dataclass
class Installation:
    backend: str
    data_dir: Path
    db_url: str
    pilot_key: str


def mariadb_available() -> str | None:
    """The MariaDB version on 127.0.0.1:3306, or None if it cannot be reached."""
    try:
        engine = create_engine(MARIADB_SERVER, pool_pre_ping=False,
                               connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            version = str(conn.scalar(text("SELECT VERSION()")))
        engine.dispose()
        return version
    except Exception:
        return None


def _create_mariadb_database(cleanup: Cleanup) -> str:
    name = f"iceprod_bench_{secrets.token_hex(4)}"
    admin = create_engine(MARIADB_SERVER, connect_args={"connect_timeout": 5})
    try:
        with admin.begin() as conn:
            conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 "
                              "COLLATE utf8mb4_bin"))
    except Exception as e:
        admin.dispose()
        raise BenchError(f"cannot create a MariaDB database on 127.0.0.1:3306: {e}") from e

    def drop() -> None:
        try:
            with admin.begin() as conn:
                conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        finally:
            admin.dispose()

    cleanup.push(f"MariaDB database {name}", drop)
    return f"{MARIADB_SERVER}/{name}"


def install(cleanup: Cleanup, backend: str, label: str) -> Installation:
    """``iceprod-server init`` into a new data directory, on ``backend``."""
    data_dir = temp_dir(cleanup, label)
    args = ["init", "--data-dir", str(data_dir)]
    if backend == "mariadb":
        db_url = _create_mariadb_database(cleanup)
        args += ["--db-url", db_url]
    elif backend == "sqlite":
        db_url = "sqlite:///" + str(data_dir.resolve() / "iceprod.db")
    else:
        raise BenchError(f"unknown database backend {backend!r}")
    run_cli(args)
    key = run_cli(["passkey", "issue", "--data-dir", str(data_dir), "--role", "pilot",
                   "--description", "benchmark pilots"]).strip().splitlines()[-1]
    return Installation(backend, data_dir, db_url, key)
