"""Failed logins per user name and address, counted in the database.

Every server process reads and writes the same rows, so ``login_attempts_per_minute``
holds for the deployment, not per process. Rows older than the window are deleted as new
failures come in, so the table stays small.
"""

from __future__ import annotations

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from iceprod_server.db.models import LoginFailure

WINDOW_SECONDS = 60.0
# the columns' widths: a longer name typed into the form is counted by its start
_NAME_MAX, _ADDRESS_MAX = 128, 64


def _who(username: str, address: str) -> tuple[str, str]:
    return username[:_NAME_MAX], address[:_ADDRESS_MAX]


def recent_failures(s: Session, username: str, address: str, now: float) -> int:
    """Failed logins of this user name from this address in the last minute."""
    name, addr = _who(username, address)
    count = s.scalar(select(func.count()).select_from(LoginFailure).where(
        LoginFailure.username == name, LoginFailure.address == addr,
        LoginFailure.created > now - WINDOW_SECONDS))
    return int(count or 0)


def login_failed(s: Session, username: str, address: str, now: float) -> None:
    name, addr = _who(username, address)
    s.execute(delete(LoginFailure).where(LoginFailure.created <= now - WINDOW_SECONDS))
    s.execute(insert(LoginFailure).values(username=name, address=addr, created=now))


def login_succeeded(s: Session, username: str, address: str) -> None:
    name, addr = _who(username, address)
    s.execute(delete(LoginFailure).where(LoginFailure.username == name,
                                         LoginFailure.address == addr))
