"""The audit log: who changed what, when, and how many rows.

Every state-changing human or admin call writes its entry with :func:`record` inside the
unit of work that makes the change, so the entry exists exactly when the change does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from iceprod_server.db.models import AuditLog

T = TypeVar("T")

# parameter names whose values are never written to the log
SECRET_PARAMS = frozenset({"password", "passkey", "site_key", "token", "key"})
_MAX_STRING = 200
_MAX_LIST = 10


@dataclass(frozen=True)
class Actor:
    """The caller, as the units of work need it: a name for the log, and its rights."""

    name: str
    user_id: str | None = None
    is_admin: bool = False

    def may_change(self, owner_id: str | None) -> bool:
        """Admins act on any dataset; users only on the ones they own."""
        return self.is_admin or (self.user_id is not None and owner_id == self.user_id)


def summarize(params: dict[str, Any]) -> dict[str, Any]:
    """A small, secret-free copy of a call's params: long lists become their length, long
    strings are cut, a config becomes the names of its tasks."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if key in SECRET_PARAMS:
            continue
        out[key] = _small(key, value)
    return out


def _small(key: str, value: Any) -> Any:
    if key == "config" and isinstance(value, dict):
        tasks = value.get("tasks")
        names = [t.get("name") for t in tasks if isinstance(t, dict)] \
            if isinstance(tasks, list) else []
        return {"tasks": names[:_MAX_LIST], "ntasks": len(names)}
    if isinstance(value, str):
        return value if len(value) <= _MAX_STRING else value[:_MAX_STRING] + "..."
    if isinstance(value, list | tuple):
        if len(value) > _MAX_LIST:
            return {"count": len(value)}
        return [_small("", v) for v in value]
    if isinstance(value, dict):
        return {"keys": sorted(str(k) for k in value)[:_MAX_LIST], "count": len(value)}
    return value


def record(s: Session, actor: Actor, method: str, target: str = "",
           params: dict[str, Any] | None = None, rows: int = 0) -> None:
    """Add one audit entry to the current transaction."""
    s.add(AuditLog(created=time.time(), actor=actor.name[:255], method=method[:128],
                   target=target[:255], params=summarize(params or {}), rows=rows))


def audited(s: Session, actor: Actor, method: str, target: str, params: dict[str, Any],
            fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run the unit ``fn(s, *args, **kwargs)`` and record it, in one transaction.

    The row count is the result when that is an int, else 1.
    """
    result = fn(s, *args, **kwargs)
    rows = result if isinstance(result, int) and not isinstance(result, bool) else 1
    record(s, actor, method, target, params, rows)
    return result


def list_entries(s: Session, limit: int = 100, before: int | None = None,
                 actor: str | None = None) -> dict[str, Any]:
    """Audit entries, newest first; ``next`` is the ``before`` of the following page."""
    limit = max(1, min(limit, 1000))
    stmt = select(AuditLog).order_by(AuditLog.audit_id.desc()).limit(limit)
    if before is not None:
        stmt = stmt.where(AuditLog.audit_id < before)
    if actor:
        stmt = stmt.where(AuditLog.actor == actor)
    items = [{"audit_id": a.audit_id, "created": a.created, "actor": a.actor,
              "method": a.method, "target": a.target, "params": a.params, "rows": a.rows}
             for a in s.scalars(stmt)]
    return {"items": items, "next": items[-1]["audit_id"] if len(items) == limit else None}
