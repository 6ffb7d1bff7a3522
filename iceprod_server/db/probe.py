"""Probes: does the database answer right now? Each runs on a new connection of a probe
engine (:func:`iceprod_server.db.engine.make_probe_engine`), whose waits are short, so a
probe ends within a couple of seconds whatever the database does.

- :func:`reads_answer`: a new connection reads (on SQLite, from the file itself);
- :func:`writes_answer` (MariaDB): a new connection runs a statement that writes nothing
  but must wait for whatever stops every write (a global read lock, a read-only server):
  a DELETE that matches no row. A lock on particular rows does not stop it: rows locked
  by a long transaction are not the database being away.

On SQLite the write side is the process's writer thread, probed with a unit of work of
its own (:meth:`iceprod_server.executors.database.Database.health`).
"""

from __future__ import annotations

from sqlalchemy import Engine, delete, text

from iceprod_server.db.models import RequestKey


def reads_answer(engine: Engine) -> bool:
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text("SELECT count(*) FROM sqlite_master"))
        else:
            conn.execute(text("SELECT 1"))
        conn.rollback()
    return True


def writes_answer(engine: Engine) -> bool:
    with engine.begin() as conn:
        conn.execute(delete(RequestKey).where(RequestKey.created < 0))
    return True
