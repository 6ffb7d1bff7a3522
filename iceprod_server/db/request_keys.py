"""Request keys: a call repeated with the same ``request_key`` returns the first result.

A client that is told -32006 (outcome unknown), or loses its connection after sending,
cannot know whether its call took effect. If it sent a ``request_key`` (any string of up
to 64 letters, digits and ``_.:-``, new for each call and the same for its repeats), it
repeats the call with the same key: a call that took effect answers what it answered the
first time and changes nothing; one that did not runs now.

The key's row is written in the transaction of the call itself, first, so it exists
exactly when the call took effect. A repeat that arrives while the first run is still
committing waits for that transaction (the row's lock) and then sees its outcome: the
first run's row, or none (it rolled back) and runs itself. Keys belong to their caller
(``scope``): two callers' keys never meet. A key is kept ``request_key_seconds`` (an hour
by default; the scheduler's sweep forgets older ones), far longer than a client retries.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, delete, select, tuple_, update
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.orm import Session

from iceprod_server.db.models import RequestKey
from iceprod_server.errors import InvalidParams

T = TypeVar("T")

PARAM = "request_key"
KEY_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def check(key: Any) -> str | None:
    """A valid key, None for none; -32602 naming the param otherwise."""
    if key is None:
        return None
    if not isinstance(key, str) or not KEY_RE.match(key):
        why = "must be 1 to 64 letters, digits or _ . : -"
        raise InvalidParams(f"{PARAM} {why}", {"problems": [f"{PARAM}: {why}"]})
    return key


def fingerprint(params: dict[str, Any]) -> str:
    """What tells a repeat of a call from another call under the same key."""
    text = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Entry:
    """One keyed call of a unit of work."""

    scope: str
    key: str
    method: str
    fingerprint: str
    token: str


def take(conn: Connection, entries: Sequence[Entry], now: float) -> dict[tuple[str, str], Any]:
    """Write each entry's row unless its key is taken (waiting for a transaction that
    holds it), and return every entry's row: a row whose ``token`` is the entry's own is
    new, any other is an earlier run's."""
    if not entries:
        return {}
    rows = [{"scope": e.scope, "request_key": e.key, "method": e.method,
             "fingerprint": e.fingerprint, "token": e.token, "created": now}
            for e in sorted(entries, key=lambda e: (e.scope, e.key))]
    if conn.dialect.name == "sqlite":
        conn.execute(sqlite.insert(RequestKey).on_conflict_do_nothing(), rows)
    else:
        stmt = mysql.insert(RequestKey)
        # a no-op update: the statement waits for the key's lock, then leaves the row as is
        conn.execute(stmt.on_duplicate_key_update(scope=RequestKey.scope), rows)
    keys = [(e.scope, e.key) for e in entries]
    found = conn.execute(
        select(RequestKey.scope, RequestKey.request_key, RequestKey.method,
               RequestKey.fingerprint, RequestKey.token, RequestKey.result)
        .where(tuple_(RequestKey.scope, RequestKey.request_key).in_(keys))).all()
    return {(r.scope, r.request_key): r for r in found}


def repeat_problem(row: Any, entry: Entry) -> InvalidParams | None:
    """-32602 for a key used before by this caller for another call."""
    if row.method == entry.method and row.fingerprint == entry.fingerprint:
        return None
    why = (f"already used for another call ({row.method} with other params); a new call "
           f"needs a new key")
    return InvalidParams(f"{PARAM} {why}", {"problems": [f"{PARAM}: {why}"]})


def once(s: Session, scope: str, key: str | None, method: str, params: dict[str, Any],
         fn: Callable[..., T], *args: Any, hidden: str | None = None,
         reissue: Callable[[Session, Any], str] | None = None) -> T:
    """Run the unit ``fn(s, *args)`` once per key: a repeat returns the first result.

    A result holding a secret (its field ``hidden``) keeps it only in the first answer:
    the server keeps no secret in the clear. A repeat gets a new one, made by
    ``reissue(s, result)`` for the same row (a key lost with a lost answer is then
    replaced, not doubled)."""
    if key is None:
        return fn(s, *args)
    entry = Entry(scope, key, method, fingerprint(params), secrets.token_hex(16))
    conn = s.connection()
    row = take(conn, [entry], time.time())[(scope, key)]
    if row.token == entry.token:
        result = fn(s, *args)
        kept = {k: v for k, v in result.items() if k != hidden} \
            if hidden and isinstance(result, dict) else result
        conn.execute(update(RequestKey)
                     .where(RequestKey.scope == scope, RequestKey.request_key == key)
                     .values(result=kept))
        return result
    problem = repeat_problem(row, entry)
    if problem is not None:
        raise problem
    first: Any = row.result
    if hidden and reissue is not None and isinstance(first, dict):
        first = {**first, hidden: reissue(s, first)}
    answer: T = first
    return answer


def forget(s: Session, before: float) -> int:
    """Forget the keys written before ``before`` (epoch seconds)."""
    return int(s.connection().execute(
        delete(RequestKey).where(RequestKey.created < before)).rowcount)
