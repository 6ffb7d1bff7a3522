"""The pilot protocol's units of work: claim, heartbeat, finish, fail, logs.

Every state change is one conditional UPDATE that names the state it expects (and, for a
pilot's call, the claim it holds), so concurrent callers and server processes can never both
win: the loser sees zero rows changed and gets -32004. Claiming takes the best queued rows
with ``FOR UPDATE SKIP LOCKED`` on MariaDB (SQLite serialises writers with BEGIN IMMEDIATE),
in index order, so a claim costs the same whatever the queue length.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, and_, bindparam, case, insert, literal, or_, select, update
from sqlalchemy.orm import Session

from iceprod_server.db.models import (
    Dataset,
    DatasetConfig,
    JsonCol,
    Pilot,
    Task,
    TaskLog,
    TaskStat,
)
from iceprod_server.db.util import changed
from iceprod_server.errors import Conflict, NotFound
from iceprod_server.requirements import os_from_column

# a resource overuse makes the requirement grow by this factor on the next attempt
OVERUSE_GROWTH = 1.5
GROWABLE = ("memory", "disk", "time")


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


# Statements of the hot path are built once; each call only binds values.
_FIT_COLUMNS = (Task.task_id, Task.req_cpu, Task.req_gpu, Task.req_memory, Task.req_disk,
                Task.req_time, Task.req_os)
_FITTING = (
    select(*_FIT_COLUMNS)
    .where(Task.status == "queued", Task.req_cpu <= bindparam("b_cpu"),
           Task.req_gpu <= bindparam("b_gpu"), Task.req_memory <= bindparam("b_memory"),
           Task.req_disk <= bindparam("b_disk"), Task.req_time <= bindparam("b_time"),
           # one platform, or a pilot's platform among several (requirements.os_column)
           or_(Task.req_os.is_(None), Task.req_os == bindparam("b_os"),
               Task.req_os.like(bindparam("b_os_listed"), escape="/")))
    .order_by(Task.queue_rank, Task.task_id)
    .limit(bindparam("b_limit", type_=Integer))
)
_FITTING_LOCKED = _FITTING.with_for_update(skip_locked=True)
_CLAIM = (
    update(Task)
    .where(Task.task_id.in_(bindparam("b_ids", expanding=True)), Task.status == "queued")
    .values(status="processing", status_changed=bindparam("b_now"),
            attempt=Task.attempt + 1, claim=bindparam("b_token"),
            claimed_by=bindparam("b_claimant"), lease_expires=bindparam("b_lease"))
)
_CLAIMED = (
    select(Task.task_id, Task.name, Task.job_id, Task.job_index, Task.attempt,
           Task.req_cpu, Task.req_gpu, Task.req_memory, Task.req_disk, Task.req_time,
           Task.req_os, Dataset.dataset_id, Dataset.dataset_num, Dataset.njobs,
           Dataset.debug, DatasetConfig.updated, DatasetConfig.config)
    .join(Dataset, Dataset.dataset_id == Task.dataset_id)
    .join(DatasetConfig, DatasetConfig.dataset_id == Task.dataset_id)
    .where(Task.claim == bindparam("b_token"))
    .order_by(Task.queue_rank, Task.task_id)
)
# parsed dataset configs by (dataset id, last update); a config is read far more than changed
_configs: dict[tuple[str, float], Any] = {}
_configs_lock = threading.Lock()


def _parsed_config(dataset_id: str, updated: float, text: str) -> Any:
    key = (dataset_id, updated)
    with _configs_lock:
        found = _configs.get(key)
    if found is None:
        found = json.loads(text) if text else {}
        with _configs_lock:
            if len(_configs) > 256:
                _configs.clear()
            _configs[key] = found
    return found


def claim_tasks(s: Session, claimant: str, offer: Offer, lease_seconds: float,
                hostname: str = "") -> list[dict[str, Any]]:
    """Claim queued tasks that fit in ``offer``, best first, packing several while they fit.

    Returns IceProd task descriptions: the dataset config and the task's options.
    """
    if offer.cpu < 1:
        return []
    query = _FITTING if s.get_bind().dialect.name == "sqlite" else _FITTING_LOCKED
    chosen: list[str] = []
    left = offer
    rows = s.execute(query, {"b_cpu": offer.cpu, "b_gpu": offer.gpu, "b_memory": offer.memory,
                             "b_disk": offer.disk, "b_time": offer.time, "b_os": offer.os,
                             "b_os_listed": _listed(offer.os),
                             "b_limit": 2 * offer.cpu + 4})
    for row in rows:
        req = _requirements(row)
        if left.fits(req):
            chosen.append(row.task_id)
            left = left.minus(req)
            if left.cpu < 1:
                break
    if not chosen:
        return []
    now = time.time()
    token = secrets.token_hex(16)
    s.execute(_CLAIM, {"b_ids": chosen, "b_now": now, "b_token": token,
                       "b_claimant": claimant, "b_lease": now + lease_seconds})
    return [{
        "config": _parsed_config(r.dataset_id, r.updated, r.config),
        "options": {
            "task_id": r.task_id,
            "task": r.name,
            "dataset_id": r.dataset_id,
            "dataset": r.dataset_num,
            "job": r.job_index,
            "job_id": r.job_id,
            "jobs_submitted": r.njobs,
            "debug": bool(r.debug),
            "resources": _requirements(r),
            "attempt": r.attempt,
        },
    } for r in s.execute(_CLAIMED, {"b_token": token})]


_HELD = select(Task.task_id, Task.dataset_id, Task.status, Task.attempt, Task.claim,
               Task.claimed_by, Task.failures, Task.req_cpu, Task.req_gpu, Task.req_memory,
               Task.req_disk, Task.req_time, Task.req_os).where(
    Task.task_id == bindparam("b_task_id"))


def _held(s: Session, task_id: str) -> Any:
    task = s.execute(_HELD, {"b_task_id": task_id}).first()
    if task is None:
        raise NotFound(f"no task {task_id!r}", {"task_id": task_id})
    return task


def _check_holder(task: Any, claimant: str, attempt: int | None) -> bool:
    """True if the caller holds the task's current claim (and named its attempt, if any)."""
    return bool(task.claimed_by == claimant and (attempt is None or attempt == task.attempt))


def _conflict(task: Any, why: str) -> Conflict:
    return Conflict(why, {"task_id": task.task_id, "status": task.status,
                          "attempt": task.attempt})


def set_processing(s: Session, task_id: str, claimant: str, lease_seconds: float,
                   attempt: int | None = None) -> bool:
    """Claim one queued task by id, or confirm a claim the caller already holds."""
    task = _held(s, task_id)
    if task.status == "processing" and _check_holder(task, claimant, attempt):
        return True
    if task.status != "queued":
        raise _conflict(task, f"task is {task.status}, not queued")
    now = time.time()
    rows = changed(s,
        update(Task).where(Task.task_id == task_id, Task.status == "queued")
        .values(status="processing", status_changed=now, attempt=Task.attempt + 1,
                claim=secrets.token_hex(16), claimed_by=claimant,
                lease_expires=now + lease_seconds)
    )
    if rows != 1:
        raise _conflict(task, "task was claimed by another pilot")
    return True


def still_running(s: Session, task_id: str, claimant: str, lease_seconds: float,
                  attempt: int | None = None) -> bool:
    """True while the task is queued, or processing under the caller's claim (the lease is
    extended); False once the caller's claim is gone (reset, suspended, expired)."""
    task = _held(s, task_id)
    if task.status == "queued":
        return True
    if task.claimed_by is not None and not _check_holder(task, claimant, attempt):
        raise _conflict(task, "task is held by another claim")
    if task.status != "processing" or task.claimed_by is None:
        return False
    rows = changed(s,
        update(Task).where(Task.task_id == task_id, Task.status == "processing",
                           Task.claim == task.claim)
        .values(lease_expires=time.time() + lease_seconds)
    )
    return rows == 1


def finish_task(s: Session, task_id: str, claimant: str, stats: dict[str, Any],
                attempt: int | None = None) -> dict[str, Any]:
    """processing -> complete for the caller's claim; a repeat by the same claim is a no-op."""
    task = _held(s, task_id)
    if task.status == "complete" and _check_holder(task, claimant, attempt):
        return {"task_id": task_id, "status": "complete", "repeated": True}
    if task.status != "processing" or not _check_holder(task, claimant, attempt):
        raise _conflict(task, "task is not processing under this claim")
    now = time.time()
    rows = changed(s, _FINISH, {"b_task_id": task_id, "b_claim": task.claim, "b_now": now})
    if rows != 1:
        raise _conflict(task, "task changed while finishing")
    _add_stat(s, task, now, stats, error=False)
    return {"task_id": task_id, "status": "complete", "repeated": False}


_FINISH = (
    update(Task)
    .where(Task.task_id == bindparam("b_task_id"), Task.status == "processing",
           Task.claim == bindparam("b_claim"))
    .values(status="complete", status_changed=bindparam("b_now"), lease_expires=None)
)
_ADD_STAT = insert(TaskStat)


def _add_stat(s: Session, task: Any, now: float, stats: dict[str, Any], error: bool) -> None:
    time_used = stats.get("time_used")
    if not isinstance(time_used, int | float) or isinstance(time_used, bool):
        time_used = None
    hostname = stats.get("hostname")
    s.execute(_ADD_STAT, {"task_id": task.task_id, "dataset_id": task.dataset_id,
                          "attempt": task.attempt, "created": now, "error": error,
                          "hostname": str(hostname)[:255] if hostname else "",
                          "time_used": time_used, "stats": stats})


def overused(error_info: dict[str, Any], requirements: dict[str, Any]) -> list[str]:
    """Which of memory, disk and time the failed attempt ran out of."""
    found = set()
    text = str(error_info.get("error", "")).lower()
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
               max_resets: int, attempt: int | None = None) -> dict[str, Any]:
    """Count a failure of the caller's attempt: reset, failed at max_resets, or suspended
    for a debug dataset. A resource overuse grows that requirement 1.5x."""
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
    values: dict[str, Any] = {"status": status, "status_changed": time.time(),
                              "failures": failures, "lease_expires": None}
    for name in grow:
        values["req_" + name] = getattr(task, "req_" + name) * OVERUSE_GROWTH
    rows = changed(s,
        update(Task).where(Task.task_id == task_id, Task.status == "processing",
                           Task.claim == task.claim).values(**values)
    )
    if rows != 1:
        raise _conflict(task, "task changed while reporting the error")
    _add_stat(s, task, values["status_changed"], error_info, error=True)
    return {"task_id": task_id, "status": status, "failures": failures, "grown": grow}


def check_log_writer(s: Session, task_id: str, claimant: str) -> int:
    """The attempt a log upload belongs to; the caller must hold or have held the claim."""
    task = _held(s, task_id)
    if task.claimed_by != claimant:
        raise _conflict(task, "logs may only be uploaded by the task's claim")
    return task.attempt


def store_log(s: Session, task_id: str, claimant: str, name: str, size: int,
              data: str | None, path: str | None) -> dict[str, Any]:
    attempt = check_log_writer(s, task_id, claimant)
    s.add(TaskLog(task_id=task_id, attempt=attempt, name=name, created=time.time(),
                  size=size, data=data, path=path))
    return {"task_id": task_id, "name": name, "size": size}


def update_pilot(s: Session, pilot_id: str, key_id: str | None, hostname: str,
                 tasks: list[Any], available: dict[str, Any],
                 claimed: dict[str, Any]) -> None:
    now = time.time()
    rows = changed(s,
        update(Pilot).where(Pilot.pilot_id == pilot_id)
        .values(tasks=tasks, resources_available=available, resources_claimed=claimed,
                last_update=now)
    )
    if rows == 0:
        s.execute(insert(Pilot).values(pilot_id=pilot_id, key_id=key_id, hostname=hostname,
                                       site="", tasks=tasks, resources_available=available,
                                       resources_claimed=claimed, last_update=now))


def expire_leases(s: Session, now: float, max_resets: int, batch: int = 1000) -> int:
    """Processing tasks whose lease ran out count a failure ("lost contact"), set-based."""
    rows = s.execute(
        select(Task.task_id, Dataset.debug)
        .join(Dataset, Dataset.dataset_id == Task.dataset_id)
        .where(Task.status == "processing", Task.lease_expires < now)
        .limit(batch)
    ).all()
    count = 0
    for debug in (False, True):
        ids = [r.task_id for r in rows if bool(r.debug) == debug]
        if not ids:
            continue
        expired = and_(Task.task_id.in_(ids), Task.status == "processing",
                       Task.lease_expires < now)
        s.execute(insert(TaskStat).from_select(
            ["task_id", "dataset_id", "attempt", "created", "error", "hostname", "stats"],
            select(Task.task_id, Task.dataset_id, Task.attempt, literal(now), literal(True),
                   literal(""), literal(_LOST, JsonCol)).where(expired)))
        status = literal("suspended") if debug else case(
            (Task.failures + 1 >= max_resets, "failed"), else_="reset")
        count += changed(s,
            update(Task).where(expired)
            .values(status=status, status_changed=now, failures=Task.failures + 1,
                    lease_expires=None, claim=None, claimed_by=None)
        )
    return count


_LOST = {"error": "lost contact", "reason": "lease expired"}


