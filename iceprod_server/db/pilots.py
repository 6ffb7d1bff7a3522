"""Pilot rows: what each pilot last said about itself with ``update_pilot``.

A row belongs to the passkey that created it (its ``key_id``); only that key, or an
admin, may change it afterwards. Pilot ids are chosen by the pilots, so without this one
pilot (or anyone holding a pilot key) could overwrite what another reports. Pilots that
share a key share its rows: the server cannot tell them apart any better.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import false, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from iceprod_server.db.models import Pilot
from iceprod_server.db.tasks import extend_leases
from iceprod_server.db.util import changed
from iceprod_server.errors import Forbidden


def update_pilot(s: Session, pilot_id: str, key_id: str | None, admin: bool, hostname: str,
                 tasks: list[str], available: dict[str, Any], claimed: dict[str, Any],
                 claimant: str = "", lease_seconds: float = 0.0) -> None:
    """Record a pilot's state, as the key ``key_id`` (any row, for an ``admin``); the
    caller's processing tasks among ``tasks`` get their leases renewed. -32002 for a row
    that another key created."""
    now = time.time()
    values = {"tasks": tasks, "resources_available": available,
              "resources_claimed": claimed, "last_update": now}
    stmt = update(Pilot).where(Pilot.pilot_id == pilot_id).values(**values)
    if not admin:
        stmt = stmt.where(Pilot.key_id == key_id) if key_id else stmt.where(false())
    if changed(s, stmt) == 0:
        if s.scalar(select(Pilot.pilot_id).where(Pilot.pilot_id == pilot_id)) is not None:
            raise _not_yours(pilot_id)
        try:
            with s.begin_nested():
                s.execute(insert(Pilot).values(pilot_id=pilot_id, key_id=key_id,
                                               hostname=hostname, site="", **values))
        except IntegrityError:
            # made meanwhile by another call: this one may change it only if it is its own
            if changed(s, stmt) == 0:
                raise _not_yours(pilot_id) from None
    if claimant and lease_seconds > 0:
        extend_leases(s, tasks[:1000], claimant, lease_seconds)


def _not_yours(pilot_id: str) -> Forbidden:
    return Forbidden(f"pilot {pilot_id!r} was recorded with another passkey; only that key "
                     "(or an admin) may change it", {"pilot_id": pilot_id})
