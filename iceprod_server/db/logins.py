"""Login attempts per user name and address, counted in the database.

An attempt is recorded *before* its password is checked, and the count that decides
whether it may go on is read only after that record is committed (two units of work, in
this order). Of attempts made at the same moment, on any number of server processes, each
one's count includes itself and every attempt that read its count before it (each of those
committed its row first), so the k-th to read sees at least k rows: no more than
``login_attempts_per_minute`` of them get to check a password. Under such a burst some
may be refused that a slower sequence would have let through; never the other way round.

A refused attempt takes its row back (it checked nothing); a wrong password leaves its
row, which is then the failure counted for the next minute; a right one clears the rows of
its user name and address. Rows older than the window are deleted as new attempts come
in, so the table stays small.
"""

from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from iceprod_server.db.models import LoginFailure

WINDOW_SECONDS = 60.0
# the columns' widths: a longer name typed into the form is counted by its start
_NAME_MAX, _ADDRESS_MAX = 128, 64


def _who(username: str, address: str) -> tuple[str, str]:
    return username[:_NAME_MAX], address[:_ADDRESS_MAX]


def reserve_attempt(s: Session, username: str, address: str, now: float) -> int:
    """Record an attempt of this user name from this address; returns its id, for
    :func:`release_attempt`. Commit it before :func:`recent_attempts` decides."""
    name, addr = _who(username, address)
    s.execute(delete(LoginFailure).where(LoginFailure.created <= now - WINDOW_SECONDS))
    attempt = LoginFailure(username=name, address=addr, created=now)
    s.add(attempt)
    s.flush()
    return attempt.failure_id


def recent_attempts(s: Session, username: str, address: str, now: float) -> int:
    """Attempts of this user name from this address in the last minute: failures, and
    attempts under way (the caller's own included)."""
    name, addr = _who(username, address)
    count = s.scalar(select(func.count()).select_from(LoginFailure).where(
        LoginFailure.username == name, LoginFailure.address == addr,
        LoginFailure.created > now - WINDOW_SECONDS))
    return int(count or 0)


def release_attempt(s: Session, attempt_id: int) -> None:
    """Take back an attempt that was refused before it checked a password."""
    s.execute(delete(LoginFailure).where(LoginFailure.failure_id == attempt_id))


def login_succeeded(s: Session, username: str, address: str) -> None:
    name, addr = _who(username, address)
    s.execute(delete(LoginFailure).where(LoginFailure.username == name,
                                         LoginFailure.address == addr))
