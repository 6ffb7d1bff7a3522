"""Schema versions: Alembic migrations, configured here in code (there is no alembic.ini).

``iceprod-server init`` and ``iceprod-server migrate`` call :func:`upgrade`; the server and
the other commands call :func:`check_schema` and refuse to run on a database that is not at
the newest revision, saying which command fixes it.

To write a new migration after changing :mod:`iceprod_server.db.models`::

    python -m iceprod_server.db.migrate revision "add column x" --db-url sqlite:////tmp/m.db

(the database must be at head; the new file lands in ``db/migrations/versions/``; read it
and fix it by hand before committing).
"""

from __future__ import annotations

import argparse
import functools
import logging
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect

from iceprod_server.config import safe_db_url
from iceprod_server.db.engine import make_engine
from iceprod_server.db.models import Base

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"



def _not_chatter(record: logging.LogRecord) -> bool:
    """Alembic announces its dialect at INFO on every schema check; keep only the lines
    that say what it changed ("Running upgrade ...")."""
    return not record.getMessage().startswith(("Context impl", "Will assume"))


logging.getLogger("alembic.runtime.migration").addFilter(_not_chatter)


class SchemaOutdated(RuntimeError):
    """The database is not at the schema revision this code needs."""


def alembic_config(connection: Connection | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


@functools.cache
def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at; None when it has no IceProd schema."""
    return MigrationContext.configure(connection).get_current_revision()


def _known(revision: str) -> bool:
    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except Exception:  # alembic raises several kinds for an unknown id
        return False


def check_schema(connection: Connection, data_dir: str | None = None) -> None:
    """Raise :class:`SchemaOutdated`, with the command that fixes it, unless the database
    is at the head revision."""
    where = f"--data-dir {data_dir}" if data_dir else "--data-dir DIR"
    current = current_revision(connection)
    head = head_revision()
    if current == head:
        return
    if current is None:
        if inspect(connection).has_table("tasks"):
            raise SchemaOutdated(
                "database has IceProd tables but no schema version (it was not made by "
                "`iceprod-server init`): give the server an empty database and run "
                f"`iceprod-server init {where}`")
        raise SchemaOutdated(
            f"database has no IceProd schema: run `iceprod-server init {where}` "
            f"(or `iceprod-server migrate {where}`)")
    if not _known(current):
        raise SchemaOutdated(
            f"database schema is at {current}, which this server does not know (made by a "
            f"newer version?); this server needs {head}: install the newer iceprod-server")
    raise SchemaOutdated(
        f"database schema is at {current}, this server needs {head}: "
        f"run `iceprod-server migrate {where}`")


def upgrade(url: str) -> None:
    """Bring the database at ``url`` to the head revision (creating the schema if empty)."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "head")
    finally:
        engine.dispose()


def upgrade_with_report(url: str) -> tuple[str | None, str]:
    """:func:`upgrade`, returning the revisions before and after."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            before = current_revision(conn)
            command.upgrade(alembic_config(conn), "head")
            after = current_revision(conn)
    finally:
        engine.dispose()
    return before, after or head_revision()


def schema_differences(url: str) -> list[object]:
    """What autogenerate would change between the models and the database at ``url``
    (empty when the migrations and the models agree)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, Base.metadata))
    finally:
        engine.dispose()


def _next_rev_id() -> str:
    numbers = [int(p.name[:4]) for p in (MIGRATIONS_DIR / "versions").glob("[0-9]*.py")]
    return f"{max(numbers, default=0) + 1:04d}"


def _main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m iceprod_server.db.migrate",
        description="Developer tools for schema migrations.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    rev = sub.add_parser("revision", help="autogenerate a new migration from the models")
    rev.add_argument("message")
    rev.add_argument("--db-url", required=True, help="a database at the head revision")
    rev.add_argument("--rev-id", help="revision id (default: next number, 4 digits)")
    chk = sub.add_parser("check", help="compare the models with a migrated database")
    chk.add_argument("--db-url", required=True)
    chk.add_argument("--upgrade", action="store_true", help="upgrade to head first")
    args = parser.parse_args()
    if args.cmd == "revision":
        engine = make_engine(args.db_url)
        with engine.begin() as conn:
            command.revision(alembic_config(conn), message=args.message, autogenerate=True,
                             rev_id=args.rev_id or _next_rev_id())
        engine.dispose()
    else:
        if args.upgrade:
            upgrade(args.db_url)
        diffs = schema_differences(args.db_url)
        for d in diffs:
            print(d)
        print(f"{len(diffs)} differences between the models and {safe_db_url(args.db_url)}")
        raise SystemExit(1 if diffs else 0)


if __name__ == "__main__":
    _main()
