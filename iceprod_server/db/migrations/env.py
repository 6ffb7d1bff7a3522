"""Alembic environment, driven from :mod:`iceprod_server.db.migrate` (no alembic.ini).

The caller puts an open connection in ``config.attributes["connection"]``; migrations run on
it, inside the caller's transaction where the database allows transactional DDL.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from iceprod_server.db.models import Base

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode copies the table instead
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        compare_server_default=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run() -> None:
    if context.is_offline_mode():
        context.configure(url=context.config.get_main_option("sqlalchemy.url"),
                          target_metadata=target_metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("iceprod_server.db.migrate passes the connection to migrate")
    _run(connection)


run()
