"""The probe that tells whether the database answers right now: a new connection of a
probe engine (:func:`iceprod_server.db.engine.make_probe_engine`), whose waits are short,
reads (on SQLite, from the file itself). It ends within a couple of seconds whatever the
database does, and a pooled connection the database has dropped cannot fool it.

On SQLite the write side is the process's writer thread, probed with a unit of work of
its own (:meth:`iceprod_server.executors.database.Database.health`).
"""

from __future__ import annotations

from sqlalchemy import Engine, text


def reads_answer(engine: Engine) -> bool:
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text("SELECT count(*) FROM sqlite_master"))
        else:
            conn.execute(text("SELECT 1"))
        conn.rollback()
    return True
