"""A client site's outbox, read into the changes of one ``master_update`` call and settled
by the master's answer.

A call carries at most ``limit`` outbox rows and about ``budget`` bytes of JSON. A log
that does not fit the call goes in pieces: ``data`` holding bytes ``[offset, end)`` of the
log's ``size`` (UTF-8 as stored here, cut on a character boundary), one piece per call,
each acknowledged with the bytes the master holds (kept in ``outbox.sent``), so a restart
or an outage goes on where the master is. The log's row leaves the outbox once the master
stored it whole.

Versions: a row gets its version the first time it goes into a call and keeps it for every
resend, unless the master answers that it is ``stale`` (the task has a newer version there)
or too far ahead of its clock: then the row is stamped anew on its next read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from iceprod_server.db.models import Outbox, Task, TaskLog, TaskStat
from iceprod_server.db.sync_client import save_floor
from iceprod_server.db.util import changed
from iceprod_server.federation.hlc import HybridClock

# bytes of a call besides its changes (method, params, backlog), and of a change besides
# its columns, with the longest version
ENVELOPE = 256
CHANGE_OVERHEAD = 256
# a piece smaller than this is not worth a call of its own: the log waits for the next one
MIN_PIECE = 4096


def _size(value: Any) -> int:
    # as the link encodes the call (json.dumps defaults: ASCII, escapes)
    return len(json.dumps(value))


class _DoesNotFit(Exception):
    pass


def take_outbox(s: Session, limit: int, budget: int, clock: HybridClock,
                data_dir: str = "") -> list[dict[str, Any]]:
    """The oldest outbox rows, at most ``limit`` of them and about ``budget`` bytes, as
    changes (one per task attempt and row, with the row's current columns), each with the
    outbox ids it stands for in ``outbox_ids``."""
    rows = list(s.scalars(select(Outbox).order_by(Outbox.outbox_id).limit(limit)))
    groups: dict[tuple[str, str, int], list[Outbox]] = {}
    for r in rows:
        groups.setdefault((r.table_name, r.row_key, r.site_attempt), []).append(r)
    out: list[dict[str, Any]] = []
    used = ENVELOPE
    stamped = False
    for (table, row_key, attempt), group in groups.items():
        room = budget - used - CHANGE_OVERHEAD
        try:
            columns = (_log_columns(s, row_key, data_dir, max(r.sent for r in group), room,
                                    alone=not out) if table == "task_logs"
                       else _columns(s, table, row_key))
        except _DoesNotFit:
            break
        ids = [r.outbox_id for r in group]
        if columns is None:  # the row is gone: nothing to say about it
            s.execute(delete(Outbox).where(Outbox.outbox_id.in_(ids)))
            continue
        size = _size(columns) + CHANGE_OVERHEAD
        if out and used + size > budget:
            break
        for r in group:
            if r.version is None:
                r.version = clock.tick()
                stamped = True
        out.append({"table": table, "key": row_key, "task_id": group[0].task_id,
                    "attempt": attempt, "columns": columns,
                    "version": max(r.version or "" for r in group), "outbox_ids": ids})
        used += size
    if stamped:
        save_floor(s, clock.last)
    return out


def _columns(s: Session, table: str, key: str) -> dict[str, Any] | None:
    if table == "tasks":
        t = s.get(Task, key)
        return None if t is None else {"status": t.status, "failures": t.failures,
                                       "req_memory": t.req_memory, "req_disk": t.req_disk,
                                       "req_time": t.req_time}
    st = s.get(TaskStat, int(key))
    return None if st is None else {"created": st.created, "error": bool(st.error),
                                    "hostname": st.hostname, "time_used": st.time_used,
                                    "stats": st.stats}


def _log_columns(s: Session, key: str, data_dir: str, sent: int, room: int,
                 alone: bool) -> dict[str, Any] | None:
    """The log whole if it fits ``room`` and none of it went yet; else its next piece,
    if this change may be alone in its call or the piece is worth sending."""
    log = s.get(TaskLog, int(key))
    if log is None:
        return None
    base = {"name": log.name, "created": log.created}
    path = Path(data_dir, log.path) if log.path else None
    size = log.size
    if path is not None:
        on_disk = _file_size(path)
        if on_disk is None:
            return {**base, "data": ""}  # the file is gone: the log is empty now
        size = on_disk
    if sent == 0 and size <= room:
        whole = {**base, "data": _read(log.data, path, 0, size).decode(errors="replace")}
        if _size(whole) <= room:
            return whole
    if not alone and room < 16 * MIN_PIECE:
        raise _DoesNotFit
    return _piece(base, log.data, path, sent if sent < size else 0, size,
                  max(room, MIN_PIECE))


def _piece(base: dict[str, Any], inline: str | None, path: Path | None, offset: int,
           size: int, room: int) -> dict[str, Any]:
    want = room - 128
    while True:
        chunk = _read(inline, path, offset, want)
        end = offset + len(chunk)
        if end < size:
            chunk = chunk[:_char_boundary(chunk)]
            end = offset + len(chunk)
        piece = {**base, "data": chunk.decode(errors="replace"), "offset": offset,
                 "end": end, "size": size}
        encoded = _size(piece)
        if encoded <= room or want <= MIN_PIECE:
            return piece
        # escapes made the text longer than its bytes: take fewer bytes
        want = max(MIN_PIECE, want * room // encoded - 64)


def _char_boundary(chunk: bytes) -> int:
    """Where ``chunk`` may be cut without splitting a UTF-8 character: before a last
    character that is not complete."""
    end = len(chunk)
    for back in range(1, min(4, end) + 1):
        byte = chunk[end - back]
        if byte & 0xC0 == 0x80:  # a continuation byte: look further back
            continue
        if byte >= 0xC0 and back < (2 if byte < 0xE0 else 3 if byte < 0xF0 else 4):
            return end - back  # the lead byte of a character cut short
        break
    return end


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _read(inline: str | None, path: Path | None, offset: int, length: int) -> bytes:
    # a large log lives in a file under the data directory: only the bytes this call
    # carries are read (here, on the db pool: bounded by the push size)
    if path is None:
        return (inline or "").encode(errors="replace")[offset:offset + length]
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read(length)
    except OSError:
        return b""


def settle(s: Session, done: list[int], pieces: list[tuple[list[int], int]],
           again: list[int], floor: str | None = None) -> None:
    """After the master's answer: forget ``done``, note how much of each log sent in pieces
    the master holds, make ``again`` new (a fresh version on the next read) and, when the
    clock was started again, save its new floor."""
    if done:
        s.execute(delete(Outbox).where(Outbox.outbox_id.in_(done)))
    for ids, received in pieces:
        s.execute(update(Outbox).where(Outbox.outbox_id.in_(ids)).values(sent=received))
    if again:
        s.execute(update(Outbox).where(Outbox.outbox_id.in_(again)).values(version=None))
    if floor is not None:
        save_floor(s, floor, lower=True)


def acknowledge(s: Session, outbox_ids: list[int]) -> int:
    if not outbox_ids:
        return 0
    return changed(s, delete(Outbox).where(Outbox.outbox_id.in_(outbox_ids)))


def outbox_size(s: Session) -> int:
    return int(s.scalar(select(func.count()).select_from(Outbox)) or 0)

