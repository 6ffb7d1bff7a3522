"""Which server process of a client site runs the link to the master.

However many processes serve a site (``serve --processes N``, or several ``serve`` on one
database), one runs the link: it holds the ``site_link`` row for a few seconds at a time
and renews it every round, writing what the overview page shows. The others read that row
and show the same; when the holder stops (it lets go) or dies (its hold runs out), the
next process to look takes over.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from iceprod_server.db.models import SiteLink

NAME = "link"


def lead(s: Session, holder: str, now: float, hold: float,
         status: dict[str, Any]) -> tuple[bool, dict[str, Any] | None]:
    """Take or keep the link for ``hold`` seconds if nobody else holds it; ``(leading, the
    status the row held before)``, written by this process or by the current holder."""
    query = select(SiteLink).where(SiteLink.name == NAME)
    if s.get_bind().dialect.name != "sqlite":
        query = query.with_for_update()
    row = s.scalars(query).first()
    if row is None:
        prefix = "OR IGNORE" if s.get_bind().dialect.name == "sqlite" else "IGNORE"
        s.execute(insert(SiteLink).prefix_with(prefix).values(
            name=NAME, holder=holder, expires=now + hold, status=status))
        row = s.scalars(query).first()
        if row is None or row.holder != holder:
            return False, row.status if row is not None else None
        return True, None
    before = row.status
    if row.holder != holder and row.expires >= now:
        return False, before
    s.execute(update(SiteLink).where(SiteLink.name == NAME).values(
        holder=holder, expires=now + hold, status=status))
    return True, before


def let_go(s: Session, holder: str) -> None:
    """A stopping holder: the next process to look takes over at once."""
    s.execute(update(SiteLink).where(SiteLink.name == NAME, SiteLink.holder == holder)
              .values(expires=0.0))
