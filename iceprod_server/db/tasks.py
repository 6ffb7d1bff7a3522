"""The pilot protocol's units of work: claim, heartbeat, finish, fail, logs.

Every state change is one conditional UPDATE that names the state it expects (and, for a
pilot's call, the claim it holds), so concurrent callers and server processes can never both
win: the loser sees zero rows changed and gets -32004. Claiming (:mod:`iceprod_server.db.
claims`) takes the best queued rows with ``FOR UPDATE SKIP LOCKED`` on MariaDB (SQLite
has one writer at a time), in index order, so a claim costs the same whatever the queue
length.

A task keeps the claimants of its last two attempts and when its claimant last reported
an attempt, so a late caller is told to stop (``stillrunning`` false) rather than refused,
and may still upload the logs of the attempt it reported, as IceProd 2 pilots do after
``task_error``. A failed attempt makes the task wait in ``reset`` for a back-off that
doubles with each failure.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    bindparam,
    insert,
    select,
    update,
)
from sqlalchemy.orm import Session

from iceprod_server.db.models import (
    Dataset,
    Task,
    TaskLog,
    TaskStat,
)
from iceprod_server.db.util import changed
from iceprod_server.errors import Conflict, IceProdError, NotFound
from iceprod_server.requirements import os_from_column

# a resource overuse makes the requirement grow by this factor on the next attempt
OVERUSE_GROWTH = 1.5
GROWABLE = ("memory", "disk", "time")


@dataclass(frozen=True)
class Backoff:
    """How long a failed task waits before it is queued again: ``delay`` seconds after the
    first failure, doubled with each further one, at most ``limit``."""

    delay: float = 10.0
    limit: float = 3600.0

    def after(self, failures: int) -> float:
        if self.delay <= 0:
            return 0.0
        return min(self.limit, self.delay * 2.0 ** min(max(failures - 1, 0), 40))


@dataclass(frozen=True)
class Offer:
    """What a pilot offers: cpu and gpu counts, memory and disk in GB, time in hours."""

    cpu: int = 1
    gpu: int = 0
    memory: float = 8.0
    disk: float = 100.0
    time: float = 24.0
    os: str | None = None

    def fits(self, req: dict[str, Any]) -> bool:
        return (req["cpu"] <= self.cpu and req["gpu"] <= self.gpu
                and req["memory"] <= self.memory and req["disk"] <= self.disk
                and req["time"] <= self.time)

    def minus(self, req: dict[str, Any]) -> Offer:
        return Offer(self.cpu - req["cpu"], self.gpu - req["gpu"],
                     self.memory - req["memory"], self.disk - req["disk"], self.time, self.os)


def _listed(os_name: str | None) -> str | None:
    """The LIKE pattern that finds ``os_name`` in a ``",A,B,"`` list of platforms."""
    if not os_name:
        return None
    escaped = os_name.replace("/", "//").replace("%", "/%").replace("_", "/_")
    return f"%,{escaped},%"


def _requirements(t: Any) -> dict[str, Any]:
    return {"cpu": t.req_cpu, "gpu": t.req_gpu, "memory": t.req_memory, "disk": t.req_disk,
            "time": t.req_time, "os": os_from_column(t.req_os)}


def _resources(t: Any) -> dict[str, int | float]:
    """What a task was given, as IceProd 2 pilots account it: exactly these five numbers
    (any other key, or a null, makes them refuse the task)."""
    return {"cpu": int(t.req_cpu), "gpu": int(t.req_gpu), "memory": float(t.req_memory),
            "disk": float(t.req_disk), "time": float(t.req_time)}


def _claim_values(now: Any, token: Any, claimant: Any, lease: Any) -> Any:
    """The SET list of a claim, in order: MariaDB assigns left to right, each assignment
    seeing the ones before, so the previous claimant is copied before it is replaced."""
    return ((Task.prev_claimant, Task.last_claimant), (Task.last_claimant, claimant),
            (Task.status, "processing"), (Task.status_changed, now),
            (Task.attempt, Task.attempt + 1), (Task.claim, token),
            (Task.claimed_by, claimant), (Task.lease_expires, lease))


_HELD = select(Task.task_id, Task.dataset_id, Task.status, Task.attempt, Task.claim,
               Task.claimed_by, Task.failures, Task.req_cpu, Task.req_gpu, Task.req_memory,
               Task.req_disk, Task.req_time, Task.req_os, Task.last_claimant,
               Task.prev_claimant, Task.reported_attempt, Task.reported_at).where(
    Task.task_id == bindparam("b_task_id"))


def _held(s: Session, task_id: str) -> Any:
    task = s.connection().execute(_HELD, {"b_task_id": task_id}).first()
    if task is None:
        raise NotFound(f"no task {task_id!r}", {"task_id": task_id})
    return task


def _check_holder(task: Any, claimant: str, attempt: int | None) -> bool:
    """True if the caller holds the task's current claim (and named its attempt, if any)."""
    return bool(task.claimed_by == claimant and (attempt is None or attempt == task.attempt))


def _holds(task: Any, claimant: str, attempt: int | None = None) -> bool:
    """True if the caller holds the task's current, live attempt."""
    return task.status == "processing" and _check_holder(task, claimant, attempt)


def extend_leases(s: Session, task_ids: list[str], claimant: str,
                  lease_seconds: float) -> int:
    """Any call from the claimant about its processing tasks renews their leases (those
    of other claimants among ``task_ids`` are left alone)."""
    if not task_ids:
        return 0
    return _rowcount(s, _EXTEND, {"b_ids": task_ids, "b_claimant": claimant,
                                  "b_lease": time.time() + lease_seconds})


_EXTEND = (
    update(Task)
    .where(Task.task_id.in_(bindparam("b_ids", expanding=True)), Task.status == "processing",
           Task.claimed_by == bindparam("b_claimant"))
    .values(lease_expires=bindparam("b_lease"))
)


def _rowcount(s: Session, stmt: Any, params: dict[str, Any]) -> int:
    """Run a prepared Core UPDATE on the unit's connection (no ORM bookkeeping): rows
    changed."""
    return int(s.connection().execute(stmt, params).rowcount)


def _conflict(task: Any, why: str) -> Conflict:
    return Conflict(why, {"task_id": task.task_id, "status": task.status,
                          "attempt": task.attempt})


def set_processing(s: Session, task_id: str, claimant: str, lease_seconds: float,
                   attempt: int | None = None) -> bool:
    """Claim one queued task by id, or confirm a claim the caller already holds."""
    task = _held(s, task_id)
    if _holds(task, claimant, attempt):
        extend_leases(s, [task_id], claimant, lease_seconds)
        return True
    if task.status != "queued":
        raise _conflict(task, f"task is {task.status}, not queued")
    now = time.time()
    rows = changed(s,
        update(Task).where(Task.task_id == task_id, Task.status == "queued")
        .ordered_values(*_claim_values(now, secrets.token_hex(16), claimant,
                                       now + lease_seconds))
    )
    if rows != 1:
        raise _conflict(task, "task was claimed by another pilot")
    return True


def still_running(s: Session, task_id: str, claimant: str, lease_seconds: float,
                  attempt: int | None = None) -> bool:
    """True while the caller holds the task's current attempt (its lease is extended).

    False once that claim is gone (finished, failed, expired, reset, suspended, taken by
    another pilot), for the claimant of either of the last two attempts or a caller naming
    an older attempt: the pilot should stop the task. Anyone else, or an attempt that
    never existed, gets -32004.
    """
    task = _held(s, task_id)
    if attempt is not None and attempt > task.attempt:
        raise _conflict(task, "no such attempt")
    if _holds(task, claimant, attempt):
        return extend_leases(s, [task_id], claimant, lease_seconds) == 1
    if (attempt is not None and attempt < task.attempt) or claimant in (
            task.last_claimant, task.prev_claimant):
        return False
    raise _conflict(task, "task is not claimed by the caller")


@dataclass(frozen=True)
class FinishRequest:
    """One ``finish_task`` call, for :func:`finish_batch`."""

    task_id: str
    claimant: str
    stats: dict[str, Any]
    attempt: int | None = None


def finish_batch(s: Session, requests: list[FinishRequest]
                 ) -> list[dict[str, Any] | IceProdError]:
    """``finish_task`` for each request, in one transaction and a fixed number of
    statements, however many requests: the tasks are read (locked on MariaDB), each
    request is judged in order against what the earlier ones did, then one UPDATE moves
    every finished task and one multi-row INSERT adds their stat rows. A refusal (-32004,
    -32003) answers only its own caller and changes nothing."""
    conn = s.connection()
    query = _FINISH_READ if conn.dialect.name == "sqlite" else _FINISH_READ_LOCKED
    ids = sorted({r.task_id for r in requests})
    tasks = {row.task_id: row for row in conn.execute(query, {"b_ids": ids})}
    status = {task_id: row.status for task_id, row in tasks.items()}
    now = time.time()
    finished: list[str] = []
    stat_rows: list[dict[str, Any]] = []
    answers: list[dict[str, Any] | IceProdError] = []
    for r in requests:
        task = tasks.get(r.task_id)
        if task is None:
            answers.append(NotFound(f"no task {r.task_id!r}", {"task_id": r.task_id}))
            continue
        holder = _check_holder(task, r.claimant, r.attempt)
        if holder and status[r.task_id] == "processing":
            status[r.task_id] = "complete"
            finished.append(r.task_id)
            time_used, hostname = _stat_fields(r.stats)
            stat_rows.append({"task_id": task.task_id, "dataset_id": task.dataset_id,
                              "attempt": task.attempt, "created": now, "error": False,
                              "hostname": hostname, "time_used": time_used,
                              "stats": r.stats})
            answers.append({"task_id": r.task_id, "status": "complete", "repeated": False})
        elif holder and status[r.task_id] == "complete":
            answers.append({"task_id": r.task_id, "status": "complete", "repeated": True})
        else:
            answers.append(Conflict("task is not processing under this claim", {
                "task_id": task.task_id, "status": status[r.task_id],
                "attempt": task.attempt}))
    if finished:
        rows = conn.execute(_FINISH_MANY, {"b_ids": finished, "b_now": now}).rowcount
        if rows != len(finished):  # the rows were read in this transaction: never
            raise RuntimeError(f"finished {rows} of {len(finished)} tasks read as processing")
        conn.execute(_ADD_STAT, stat_rows)
    return answers


_FINISH_READ = (
    select(Task.task_id, Task.dataset_id, Task.status, Task.claimed_by, Task.attempt)
    .where(Task.task_id.in_(bindparam("b_ids", expanding=True)))
)
_FINISH_READ_LOCKED = _FINISH_READ.with_for_update()
_FINISH_MANY = (
    update(Task)
    .where(Task.task_id.in_(bindparam("b_ids", expanding=True)), Task.status == "processing")
    .values(status="complete", status_changed=bindparam("b_now"), lease_expires=None,
            reported_attempt=Task.attempt, reported_at=bindparam("b_now"))
)


def _stat_fields(stats: dict[str, Any]) -> tuple[float | None, str]:
    """time_used (a number, else None) and hostname (at most 255 characters) of stats."""
    time_used = stats.get("time_used")
    if not isinstance(time_used, int | float) or isinstance(time_used, bool):
        time_used = None
    hostname = stats.get("hostname")
    return time_used, str(hostname)[:255] if hostname else ""


_ADD_STAT = insert(TaskStat)


def _add_stat(s: Session, task: Any, now: float, stats: dict[str, Any], error: bool) -> None:
    time_used, hostname = _stat_fields(stats)
    s.connection().execute(_ADD_STAT, {
        "task_id": task.task_id, "dataset_id": task.dataset_id, "attempt": task.attempt,
        "created": now, "error": error, "hostname": hostname, "time_used": time_used,
        "stats": stats})


def overused(error_info: dict[str, Any], requirements: dict[str, Any]) -> list[str]:
    """Which of memory, disk and time the failed attempt ran out of."""
    found = set()
    text = str(error_info.get("error") or error_info.get("error_summary") or "").lower()
    for name in GROWABLE:
        if f"overuse for {name}" in text or f"{name} overuse" in text:
            found.add(name)
    listed = error_info.get("overuse") or error_info.get("resource_overuse")
    if isinstance(listed, list):
        found.update(n for n in listed if n in GROWABLE)
    used = error_info.get("resources")
    if isinstance(used, dict):
        for name in GROWABLE:
            value = used.get(name)
            if (isinstance(value, int | float) and not isinstance(value, bool)
                    and value > requirements[name]):
                found.add(name)
    return sorted(found)


def task_error(s: Session, task_id: str, claimant: str, error_info: dict[str, Any],
               max_resets: int, attempt: int | None = None,
               backoff: Backoff = Backoff()) -> dict[str, Any]:
    """Count a failure of the caller's attempt: reset (queued again after the back-off),
    failed at max_resets, or suspended for a debug dataset. A resource overuse grows that
    requirement 1.5x."""
    task = _held(s, task_id)
    if task.status in ("reset", "failed", "suspended") and _check_holder(task, claimant,
                                                                         attempt):
        return {"task_id": task_id, "status": task.status, "repeated": True}
    if task.status != "processing" or not _check_holder(task, claimant, attempt):
        raise _conflict(task, "task is not processing under this claim")
    debug = s.scalar(select(Dataset.debug).where(Dataset.dataset_id == task.dataset_id))
    failures = task.failures + 1
    status = "suspended" if debug else ("failed" if failures >= max_resets else "reset")
    grow = overused(error_info, _requirements(task))
    now = time.time()
    values: dict[str, Any] = {"status": status, "status_changed": now,
                              "failures": failures, "lease_expires": None,
                              "reported_attempt": task.attempt, "reported_at": now,
                              "retry_after": now + backoff.after(failures)}
    for name in grow:
        values["req_" + name] = getattr(task, "req_" + name) * OVERUSE_GROWTH
    rows = changed(s,
        update(Task).where(Task.task_id == task_id, Task.status == "processing",
                           Task.claim == task.claim).values(**values)
    )
    if rows != 1:
        raise _conflict(task, "task changed while reporting the error")
    _add_stat(s, task, now, error_info, error=True)
    return {"task_id": task_id, "status": status, "failures": failures, "grown": grow}


def check_log_writer(s: Session, task_id: str, claimant: str, window: float) -> int:
    """The attempt a log upload belongs to: the one the caller holds, or the one it
    reported (finish_task, task_error) less than ``window`` seconds ago, even when the
    task has moved on since."""
    task = _held(s, task_id)
    if _holds(task, claimant):
        return int(task.attempt)
    reported = task.reported_attempt
    if reported is not None and task.reported_at >= time.time() - window:
        mine = {task.attempt: task.last_claimant, task.attempt - 1: task.prev_claimant}
        if mine.get(reported) == claimant:
            return int(reported)
    raise _conflict(task, "logs may only be uploaded by the claimant of the current "
                          "attempt, or of an attempt it reported a short while ago")


def store_log(s: Session, task_id: str, claimant: str, name: str, size: int,
              data: str | None, path: str | None, lease_seconds: float) -> dict[str, Any]:
    attempt = check_log_writer(s, task_id, claimant, lease_seconds)
    extend_leases(s, [task_id], claimant, lease_seconds)
    s.add(TaskLog(task_id=task_id, attempt=attempt, name=name, created=time.time(),
                  size=size, data=data, path=path))
    return {"task_id": task_id, "name": name, "size": size, "attempt": attempt}
