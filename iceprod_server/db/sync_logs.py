"""The master's side of a log that a client site sends in pieces (a log larger than the
site's ``site_push_bytes``): each piece is kept in ``site_log_pieces`` as it arrives, and
once the last one is in, the pieces are written out as one log file and the log becomes a
``task_logs`` row like any other (see :mod:`iceprod_server.rpc.site_logs`).

A piece is kept only if it continues what is here (``offset`` equal to the bytes held), so
a resent piece changes nothing and the site learns from each answer where to go on: the
answer to every piece is the number of bytes the master holds.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from iceprod_server.db.models import SiteLogPiece, SiteState, TaskLog

# seconds the pieces of a log that was never finished are kept (its task was taken back
# from the site meanwhile, or the site went away for good)
PIECES_KEPT = 7 * 86400.0


def _insert_ignore(s: Session) -> Any:
    """An INSERT that leaves an existing row alone (two copies of one piece racing)."""
    prefix = "OR IGNORE" if s.get_bind().dialect.name == "sqlite" else "IGNORE"
    return insert(SiteLogPiece).prefix_with(prefix)


def held(s: Session, origin: str) -> int:
    """Bytes of the log ``origin`` held here, from its start."""
    return int(s.scalar(select(func.max(SiteLogPiece.end))
                        .where(SiteLogPiece.origin == origin)) or 0)


def store_piece(s: Session, origin: str, piece: dict[str, Any], now: float) -> int:
    """Keep ``piece`` (``task_id``, ``attempt``, ``name``, ``created``, ``offset``,
    ``end``, ``size``, ``data``) if it continues the log; the bytes held afterwards."""
    received = held(s, origin)
    if piece["offset"] == received:
        s.execute(_insert_ignore(s), [{"origin": origin, "received": now, **piece}])
        received = held(s, origin)
    return received


def piece_owner(s: Session, origin: str) -> tuple[str, str] | None:
    """``(task_id, name)`` of the log ``origin`` while pieces of it are here."""
    row = s.execute(select(SiteLogPiece.task_id, SiteLogPiece.name)
                    .where(SiteLogPiece.origin == origin).limit(1)).first()
    return None if row is None else (row.task_id, row.name)


def piece_offsets(s: Session, origin: str) -> list[int]:
    return list(s.scalars(select(SiteLogPiece.offset).where(SiteLogPiece.origin == origin)
                          .order_by(SiteLogPiece.offset)))


def piece_data(s: Session, origin: str, offset: int) -> str:
    return s.scalar(select(SiteLogPiece.data).where(SiteLogPiece.origin == origin,
                                                    SiteLogPiece.offset == offset)) or ""


def store_assembled(s: Session, site_id: str, origin: str, path: str, size: int) -> bool:
    """The log ``origin``, written whole to ``path``, becomes a ``task_logs`` row and its
    pieces go. False (nothing stored) if another call stored it first: the caller removes
    its file."""
    first = s.scalars(select(SiteLogPiece).where(SiteLogPiece.origin == origin)
                      .order_by(SiteLogPiece.offset).limit(1)).first()
    there = s.scalar(select(TaskLog.log_id).where(TaskLog.origin == origin))
    if first is None or there is not None:
        s.execute(delete(SiteLogPiece).where(SiteLogPiece.origin == origin))
        return False
    s.execute(insert(TaskLog).values(task_id=first.task_id, attempt=first.attempt,
                                     name=first.name, created=first.created, size=size,
                                     data=None, path=path, origin=origin))
    s.execute(delete(SiteLogPiece).where(SiteLogPiece.origin == origin))
    s.execute(update(SiteState).where(SiteState.site_id == site_id)
              .values(applied=SiteState.applied + 1))
    return True


def drop_old_pieces(s: Session, now: float) -> None:
    s.execute(delete(SiteLogPiece).where(SiteLogPiece.received < now - PIECES_KEPT))
