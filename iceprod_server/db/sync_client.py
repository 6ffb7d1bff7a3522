"""A client site's side of federation: merging the work the master handed over, the
clock's floor, and applying what came down from the master (the outbox is read and settled
by :mod:`iceprod_server.db.sync_outbox`).

Pulled tasks carry the master's attempt in ``site_attempt``; the triggers of
:mod:`iceprod_server.db.sync_triggers` write their outcomes to the outbox. A task the master
took back is suspended here with its claim cleared, so the local pilot's ``stillrunning``
answers false.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from iceprod_server.db.models import (
    Dataset,
    DatasetConfig,
    Job,
    Meta,
    Outbox,
    Task,
    TaskDef,
    TaskDefDep,
)
from iceprod_server.db.util import changed
from iceprod_server.federation import hlc
from iceprod_server.federation.hlc import HybridClock

WAITING = ("idle", "waiting", "queued", "reset", "resume")
FINAL = ("complete", "failed")
CLOCK_KEY = "site_clock"


def _upsert(s: Session, model: Any, key: dict[str, Any], values: dict[str, Any]) -> bool:
    """Insert the row, or update it; True if it was new."""
    row = s.get(model, tuple(key.values()) if len(key) > 1 else next(iter(key.values())))
    if row is None:
        s.add(model(**key, **values))
        s.flush()
        return True
    for name, value in values.items():
        setattr(row, name, value)
    return False


def merge_work(s: Session, payload: dict[str, Any]) -> int:
    """Store the rows a ``queue_master`` answer holds; the handed tasks become queued
    here. Returns how many tasks were handed."""
    now = time.time()
    for d in payload.get("datasets", []):
        values = {k: v for k, v in d.items() if k != "dataset_id"}
        # the master materialises jobs; a client never makes any of its own
        values["jobs_materialized"] = d["njobs"]
        _upsert(s, Dataset, {"dataset_id": d["dataset_id"]}, values)
    for c in payload.get("dataset_configs", []):
        _upsert(s, DatasetConfig, {"dataset_id": c["dataset_id"]},
                {"config": c["config"], "updated": c["updated"]})
    for d in payload.get("task_defs", []):
        _upsert(s, TaskDef, {"dataset_id": d["dataset_id"], "task_index": d["task_index"]},
                {"name": d["name"], "requirements": d["requirements"]})
    for d in payload.get("task_def_deps", []):
        _upsert(s, TaskDefDep, dict(d), {})
    for j in payload.get("jobs", []):
        _upsert(s, Job, {"job_id": j["job_id"]},
                {"dataset_id": j["dataset_id"], "job_index": j["job_index"],
                 "status": "processing", "status_changed": now})
    for t in payload.get("dep_tasks", []):
        _store_task(s, t, now, status=t["status"], site_attempt=None)
    handed = payload.get("tasks", [])
    for t in handed:
        _store_task(s, t, now, status="queued", site_attempt=t["attempt"])
    if handed and payload.get("version"):
        # with the tasks: a restart must not forget the version they were handed with
        save_floor(s, payload["version"])
    return len(handed)


def _store_task(s: Session, t: dict[str, Any], now: float, status: str,
                site_attempt: int | None) -> None:
    priority = s.scalar(select(Dataset.priority).where(Dataset.dataset_id == t["dataset_id"]))
    values = {"dataset_id": t["dataset_id"], "job_id": t["job_id"],
              "job_index": t["job_index"], "task_index": t["task_index"], "name": t["name"],
              "status": status, "status_changed": now, "failures": t["failures"],
              "req_cpu": t["req_cpu"], "req_gpu": t["req_gpu"],
              "req_memory": t["req_memory"], "req_disk": t["req_disk"],
              "req_time": t["req_time"], "req_os": t["req_os"],
              "queue_rank": -(priority or 0.0), "site_attempt": site_attempt,
              "claim": None, "claimed_by": None, "lease_expires": None}
    existing = s.get(Task, t["task_id"])
    if existing is None:
        s.add(Task(task_id=t["task_id"], attempt=0, **values))
        s.flush()
    elif site_attempt is not None or existing.site_attempt is None:
        # a task handed again (after a reclaim) starts afresh under the new attempt
        s.execute(update(Task).where(Task.task_id == t["task_id"]).values(**values))


def unfinished_pulled(s: Session) -> int:
    """Pulled tasks waiting for a local pilot (the puller keeps this above its threshold)."""
    return int(s.scalar(select(func.count()).select_from(Task).where(
        Task.status.in_(WAITING), Task.site_attempt.is_not(None))) or 0)


def held_counts(s: Session) -> dict[str, int]:
    unfinished = s.scalar(select(func.count()).select_from(Task).where(
        Task.site_attempt.is_not(None), Task.status.not_in(FINAL))) or 0
    outbox = s.scalar(select(func.count()).select_from(Outbox)) or 0
    return {"unfinished": int(unfinished), "outbox": int(outbox)}


def load_clock(s: Session, clock: HybridClock) -> None:
    """Never make a version older than one made or seen before a restart."""
    saved = s.get(Meta, CLOCK_KEY)
    if saved is not None:
        try:
            clock.observe(saved.value)
        except ValueError:
            pass  # not a version: the floor is saved again with the next one


def save_floor(s: Session, version: str, lower: bool = False) -> None:
    """Keep ``version`` as the clock's floor across restarts: the versions the master
    handed tasks out with, which this site's changes of those tasks must exceed, and the
    newest version made here. It only rises, unless ``lower`` (the clock started again
    from its wall time because the master refused versions too far ahead)."""
    saved = s.get(Meta, CLOCK_KEY)
    if saved is None:
        s.add(Meta(key=CLOCK_KEY, value=version))
        s.flush()
        return
    try:
        newer = hlc.parse(version)[:2] > hlc.parse(saved.value)[:2]
    except ValueError:
        newer = True
    if newer or lower:
        saved.value = version


def take_back(s: Session, task_ids: list[str]) -> int:
    """Tasks the master no longer lets this site hold: suspended here, claim cleared, no
    longer pulled (so nothing more about them goes to the outbox)."""
    if not task_ids:
        return 0
    return changed(s, update(Task).where(
        Task.task_id.in_(task_ids), Task.site_attempt.is_not(None),
        Task.status.not_in(FINAL)).values(
        status="suspended", status_changed=time.time(), claim=None, claimed_by=None,
        lease_expires=None, site_attempt=None))


def apply_down(s: Session, down: dict[str, Any]) -> dict[str, int]:
    """Apply a ``master_get_tables`` answer: take back what the master took back, follow
    dataset status, priority and config edits."""
    gone: list[str] = []
    rows = down.get("tasks", [])
    if rows:
        local = {t.task_id: t for t in s.execute(
            select(Task.task_id, Task.site_attempt, Task.status)
            .where(Task.task_id.in_([r["task_id"] for r in rows])))}
        for r in rows:
            mine = local.get(r["task_id"])
            if mine is None or mine.site_attempt is None or mine.status in FINAL:
                continue
            if not r["held"] or r["attempt"] != mine.site_attempt:
                gone.append(r["task_id"])
    for d in down.get("datasets", []):
        s.execute(update(Dataset).where(Dataset.dataset_id == d["dataset_id"]).values(
            status=d["status"], priority=d["priority"], description=d["description"],
            status_changed=d["status_changed"]))
        s.execute(update(Task).where(Task.dataset_id == d["dataset_id"],
                                     Task.status == "queued",
                                     Task.queue_rank != -d["priority"])
                  .values(queue_rank=-d["priority"]))
    for c in down.get("dataset_configs", []):
        s.execute(update(DatasetConfig).where(DatasetConfig.dataset_id == c["dataset_id"],
                                              DatasetConfig.updated < c["updated"])
                  .values(config=c["config"], updated=c["updated"]))
    return {"taken_back": take_back(s, gone)}
