"""Small helpers shared by the units of work."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, Executable
from sqlalchemy.orm import Session


def changed(s: Session, stmt: Executable, params: dict[str, Any] | None = None) -> int:
    """Execute an UPDATE or DELETE and return how many rows it changed."""
    return cast(CursorResult[Any], s.execute(stmt, params)).rowcount
