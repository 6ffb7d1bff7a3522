"""The master applies the changes a client site pushed (``master_update``).

A change is ``{table, key, task_id, attempt, columns, version}``: structured data, never
SQL. Each is checked against the schema (known table, known columns, right types) and
against what the site may change: only outcomes of tasks it holds, for the attempt it was
handed (ownership comes first, so neither a skewed clock nor a late message undoes a
reclaim), and the stats and logs of those attempts. A version further ahead of the
master's clock than ``site_max_ahead`` is refused (the site keeps the change and stamps it
again), so one site's clock never pulls the master's, and through it every site's, into
the future. Then the version decides: a change that is not newer than the row's version is
acknowledged and changes nothing, so a resend is a no-op and an older change never
overwrites a newer one; a ``stale`` answer carries the row's version, so that the site can
stamp a change it still stands by above it and send it again. A refused change changes
nothing but its refusal record; every change gets its own outcome.

A log comes whole (``data``) or, when it is larger than the site's push size, in pieces
(``data`` with ``offset``, ``end`` and ``size`` in bytes): see :mod:`sync_logs`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from iceprod_server.db import sync_logs
from iceprod_server.db.models import SiteRefusal, SiteState, Task, TaskLog, TaskStat
from iceprod_server.db.sync_master import holder, touch
from iceprod_server.db.util import changed
from iceprod_server.federation import hlc

log = logging.getLogger(__name__)

MAX_BATCH = 1000
# seconds refusal records are kept (the counts stay)
REFUSALS_KEPT = 7 * 86400.0
FINAL = ("complete", "failed", "suspended")
# what a site may report of a task: the columns a pilot's outcome sets
SITE_STATUSES = ("queued", "waiting", "idle", "processing", "reset", *FINAL)
CHANGE_KEYS = {"table", "key", "task_id", "attempt", "columns", "version"}


# the largest log a site may send in pieces (bytes)
MAX_LOG_BYTES = 1 << 40
PIECE_KEYS = ("offset", "end", "size")


class Refused(Exception):
    """A change the master does not take; ``retry``: the site should keep it and send it
    again (stamped anew), rather than drop it."""

    def __init__(self, reason: str, retry: bool = False) -> None:
        super().__init__(reason)
        self.retry = retry


@dataclass(frozen=True)
class Limits:
    """What the master judges versions against: its own wall clock (seconds) and how far
    ahead of it a site's version may be."""

    wall: float
    max_ahead: float


def _number(value: Any, name: str, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
            value) or (positive and value <= 0):
        raise Refused(f"{name} must be a {'positive ' if positive else ''}number")
    return float(value)


def _string(value: Any, name: str, most: int) -> str:
    if not isinstance(value, str) or len(value) > most:
        raise Refused(f"{name} must be a string of at most {most} characters")
    return value


def _task_values(columns: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, value in columns.items():
        if name == "status":
            if value not in SITE_STATUSES:
                raise Refused(f"status must be one of {list(SITE_STATUSES)}")
            values[name] = value
        elif name == "failures":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise Refused("failures must be an integer >= 0")
            values[name] = value
        elif name in ("req_memory", "req_disk", "req_time"):
            values[name] = _number(value, name)
        else:
            raise Refused(f"column {name!r} of tasks may not be changed by a site")
    return values


def _stat_values(columns: dict[str, Any]) -> dict[str, Any]:
    allowed = {"created", "error", "hostname", "time_used", "stats"}
    extra = sorted(set(columns) - allowed)
    if extra:
        raise Refused(f"unknown columns of task_stats: {extra}")
    stats = columns.get("stats", {})
    if not isinstance(stats, dict):
        raise Refused("stats must be an object")
    error = columns.get("error", False)
    if not isinstance(error, bool):
        raise Refused("error must be a boolean")
    time_used = columns.get("time_used")
    return {"created": _number(columns.get("created"), "created"), "error": error,
            "hostname": _string(columns.get("hostname", ""), "hostname", 255),
            "time_used": None if time_used is None else _number(time_used, "time_used",
                                                                positive=False),
            "stats": stats}


def _log_values(columns: dict[str, Any]) -> dict[str, Any]:
    extra = sorted(set(columns) - {"name", "created", "data", *PIECE_KEYS})
    if extra:
        raise Refused(f"unknown columns of task_logs: {extra}")
    name = _string(columns.get("name"), "name", 64)
    if not name:
        raise Refused("name must not be empty")
    data = _string(columns.get("data", ""), "data", 64 * 1024 * 1024)
    values = {"name": name, "created": _number(columns.get("created"), "created"),
              "data": data, "size": len(data.encode(errors="replace"))}
    if any(k in columns for k in PIECE_KEYS):
        offset, end, size = (columns.get(k) for k in PIECE_KEYS)
        if not all(isinstance(v, int) and not isinstance(v, bool)
                   for v in (offset, end, size)):
            raise Refused("offset, end and size of a piece must be integers")
        if not 0 <= offset < end <= size <= MAX_LOG_BYTES:  # type: ignore[operator]
            raise Refused(f"a piece needs 0 <= offset < end <= size <= {MAX_LOG_BYTES}")
        values.update(offset=offset, end=end, size=size)
    return values


def _check_shape(change: Any, site_id: str) -> tuple[str, str, str, int, dict[str, Any], str]:
    if not isinstance(change, dict):
        raise Refused("a change is an object {table, key, task_id, attempt, columns, version}")
    extra = sorted(set(change) - CHANGE_KEYS)
    if extra:
        raise Refused(f"unknown fields {extra}")
    table, key, task_id = change.get("table"), change.get("key"), change.get("task_id")
    attempt, columns, version = (change.get("attempt"), change.get("columns"),
                                 change.get("version"))
    if table not in ("tasks", "task_stats", "task_logs"):
        raise Refused(f"table {table!r} may not be changed by a site")
    if isinstance(key, int) and not isinstance(key, bool):
        key = str(key)
    if not isinstance(key, str) or not key or len(key) > 64:
        raise Refused("key must be a non-empty string")
    if table == "tasks":
        task_id = task_id if task_id is not None else key
    if not isinstance(task_id, str) or not task_id or len(task_id) > 32:
        raise Refused("task_id must be a task id")
    if isinstance(attempt, bool) or not isinstance(attempt, int):
        raise Refused("attempt must be an integer")
    if not isinstance(columns, dict) or not columns:
        raise Refused("columns must be a non-empty object")
    if not isinstance(version, str):
        raise Refused("version must be a string WALL_MS.COUNTER.SITE")
    try:
        _, _, origin = hlc.parse(version)
    except ValueError as e:
        raise Refused(str(e)) from e
    if origin != site_id:
        raise Refused("the version names another site")
    return str(table), key, task_id, attempt, columns, version


def _check_ahead(version: str, limits: Limits) -> None:
    ahead = hlc.wall_seconds(version) - limits.wall
    if ahead > limits.max_ahead:
        raise Refused(f"version {ahead:.0f} s ahead of the master's clock (at most "
                      f"{limits.max_ahead:g} s): check this site's clock", retry=True)


class _Batch:
    """The rows a batch touches, read once: its tasks and the origins already stored."""

    def __init__(self, s: Session, changes: list[Any]) -> None:
        task_ids = {c.get("task_id") or c.get("key") for c in changes if isinstance(c, dict)}
        ids = [i for i in task_ids if isinstance(i, str) and 0 < len(i) <= 32]
        self.tasks: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), 500):
            for r in s.execute(select(Task.task_id, Task.dataset_id, Task.status,
                                      Task.attempt, Task.claimed_by, Task.version)
                               .where(Task.task_id.in_(ids[start:start + 500]))):
                self.tasks[r.task_id] = dict(r._mapping)
        self.origins: set[str] = set()
        for model in (TaskStat, TaskLog):
            for start in range(0, len(ids), 500):
                self.origins.update(o for o in s.scalars(select(model.origin).where(
                    model.task_id.in_(ids[start:start + 500]), model.origin.is_not(None)))
                    if o)
        self.inserts: dict[Any, list[dict[str, Any]]] = {TaskStat: [], TaskLog: []}
        # logs whose last piece came in this batch: (index of the change, origin)
        self.assemble: list[tuple[int, str]] = []
        self.pieces = False


def _apply_one(s: Session, batch: _Batch, site_id: str, index: int, change: Any, now: float,
               limits: Limits, spilled: dict[int, str]) -> dict[str, Any]:
    table, key, task_id, attempt, columns, version = _check_shape(change, site_id)
    values = (_task_values if table == "tasks" else
              _stat_values if table == "task_stats" else _log_values)(columns)
    task = batch.tasks.get(task_id)
    if task is None:
        raise Refused(f"no task {task_id}")
    if task["claimed_by"] != holder(site_id) or task["attempt"] != attempt:
        raise Refused(f"task {task_id} attempt {attempt} is not held by this site")
    _check_ahead(version, limits)
    if table != "tasks":
        origin = f"{site_id}:{table}:{key}"
        if origin in batch.origins:
            return {"ok": True, "outcome": "duplicate"}
        if "offset" in values:
            return _piece(s, batch, index, origin, task_id, attempt, values, now)
        batch.origins.add(origin)
        if table == "task_stats":
            values["dataset_id"] = task["dataset_id"]
        elif index in spilled:  # written to a file before this unit (over log_inline_max)
            values.update(data=None, path=spilled[index])
        batch.inserts[TaskStat if table == "task_stats" else TaskLog].append(
            {"task_id": task_id, "attempt": attempt, "origin": origin, **values})
        return {"ok": True, "outcome": "applied"}
    if task["version"] is not None and version <= task["version"]:
        if version == task["version"]:
            return {"ok": True, "outcome": "duplicate"}
        return {"ok": True, "outcome": "stale", "version": task["version"]}
    if task["status"] != "processing":
        raise Refused(f"task {task_id} is {task['status']} at the master")
    status = values.pop("status", None)
    if status in FINAL:
        values.update(status=status, status_changed=now, lease_expires=None)
    rows = changed(s, update(Task).where(
        Task.task_id == task_id, Task.status == "processing",
        Task.claimed_by == holder(site_id), Task.attempt == attempt)
        .values(version=version, **values))
    if rows != 1:
        raise Refused(f"task {task_id} changed at the master meanwhile")
    task["version"] = version
    task["status"] = values.get("status", task["status"])
    return {"ok": True, "outcome": "applied"}


def _piece(s: Session, batch: _Batch, index: int, origin: str, task_id: str, attempt: int,
           values: dict[str, Any], now: float) -> dict[str, Any]:
    piece = {"task_id": task_id, "attempt": attempt, "name": values["name"],
             "created": values["created"], "offset": values["offset"], "end": values["end"],
             "size": values["size"], "data": values["data"]}
    received = sync_logs.store_piece(s, origin, piece, now)
    batch.pieces = True
    if received >= values["size"]:
        # the log is whole: the caller writes it out and stores it, then answers "applied"
        batch.assemble.append((index, origin))
    return {"ok": True, "outcome": "piece", "received": received}


def apply_changes(s: Session, site_id: str, changes: list[Any], now: float,
                  lease_seconds: float, backlog: int | None = None,
                  limits: Limits | None = None,
                  spilled: dict[int, str] | None = None) -> dict[str, Any]:
    """Apply a batch; ``{results: [{ok, outcome} or {ok: false, error}], applied, refused,
    completed, newest, assemble}`` with one result per change, in order. ``spilled``: the
    logs (by index) whose data the caller already wrote to a file; ``assemble``: the logs
    whose last piece came, for the caller to write out (:mod:`sync_logs`)."""
    limits = limits or Limits(now, math.inf)
    spilled = spilled or {}
    touch(s, site_id, now, lease_seconds, backlog)
    results: list[dict[str, Any]] = []
    refusals: list[dict[str, Any]] = []
    applied = completed = 0
    newest: str | None = None
    batch = _Batch(s, changes if len(changes) <= MAX_BATCH else [])
    for i, change in enumerate(changes):
        try:
            if len(changes) > MAX_BATCH:
                raise Refused(f"a batch holds at most {MAX_BATCH} changes, got {len(changes)}")
            result = _apply_one(s, batch, site_id, i, change, now, limits, spilled)
        except Refused as e:
            reason = str(e)[:255]
            results.append({"ok": False, "error": reason, **({"retry": True} if e.retry
                                                               else {})})
            c = change if isinstance(change, dict) else {}
            refusals.append({"site_id": site_id, "created": now,
                             "table_name": str(c.get("table", ""))[:64],
                             "row_key": str(c.get("key", ""))[:128], "reason": reason})
            log.warning("site %s: change %d refused: %s", site_id, i, reason)
            continue
        results.append(result)
        outcome = result["outcome"]
        if outcome in ("applied", "piece"):
            # a piece's version passed the bound too: the clock may follow it
            applied += outcome == "applied"
            version = change["version"]
            newest = version if newest is None or version > newest else newest
            if change["table"] == "tasks" and change["columns"].get("status") in FINAL:
                completed += 1
    for model, rows in batch.inserts.items():
        if rows:
            s.execute(insert(model), rows)
    if refusals:
        # the first 100 refusals of a batch are recorded one by one; the count has them all
        s.execute(insert(SiteRefusal), refusals[:100])
        s.execute(delete(SiteRefusal).where(SiteRefusal.site_id == site_id,
                                            SiteRefusal.created < now - REFUSALS_KEPT))
    if batch.pieces:
        sync_logs.drop_old_pieces(s, now)
    stats: dict[str, Any] = {"applied": SiteState.applied + applied,
                             "refused": SiteState.refused + len(refusals)}
    if newest is not None:
        stats["clock_offset"] = hlc.wall_seconds(newest) - limits.wall
    s.execute(update(SiteState).where(SiteState.site_id == site_id).values(**stats))
    return {"results": results, "applied": applied, "refused": len(refusals),
            "completed": completed, "newest": newest, "assemble": batch.assemble}
