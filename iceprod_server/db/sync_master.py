"""The master's side of federation: handing work to a client site, what comes down to it,
and what admins see of each site.

A task handed to a site is ``processing`` at the master with ``claimed_by = "site:<id>"``,
a new attempt and a lease that every call of that site extends. The scheduler's lease
expiry reclaims the tasks of a site that stays silent, like those of a silent pilot.
Site changes are applied by :mod:`iceprod_server.db.sync_apply`.
"""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.orm import Session

from iceprod_server.db.models import (
    Dataset,
    DatasetConfig,
    Job,
    Site,
    SiteRefusal,
    SiteState,
    Task,
    TaskDef,
    TaskDefDep,
)
from iceprod_server.db.util import changed
from iceprod_server.errors import InvalidParams

# the most tasks one queue_master call hands out
MAX_PULL = 1000
# each pass of the down-sync starts this many seconds before the previous one began: a
# transaction that committed late with an earlier timestamp is not missed (applying a row
# twice is harmless)
OVERLAP = 10.0
DOWN_LIMIT = 5000
# stands for "no limit" (MySQL takes no infinity)
NO_LIMIT = 1e18
DOWN_TABLES = ("tasks", "datasets", "dataset_configs")
TASK_COLUMNS = ("task_id", "dataset_id", "job_id", "job_index", "task_index", "name",
                "status", "attempt", "failures", "req_cpu", "req_gpu", "req_memory",
                "req_disk", "req_time", "req_os", "version")
DATASET_COLUMNS = ("dataset_id", "dataset_num", "description", "status", "priority", "debug",
                   "njobs", "ntasks", "gridspec", "stat_keys", "created", "status_changed")


def holder(site_id: str) -> str:
    """What ``claimed_by`` says for a task a site holds."""
    return f"site:{site_id}"


def _row(obj: Any, columns: tuple[str, ...]) -> dict[str, Any]:
    return {c: getattr(obj, c) for c in columns}


def touch(s: Session, site_id: str, now: float, lease_seconds: float,
          backlog: int | None = None) -> None:
    """A call from the site: note the contact and extend the leases of what it holds."""
    values: dict[str, Any] = {"last_contact": now}
    if backlog is not None:
        values["outbox_backlog"] = backlog
    if not changed(s, update(SiteState).where(SiteState.site_id == site_id).values(**values)):
        # a site's first calls may come together (its puller and its down-sync): the
        # second insert finds the row there and leaves it
        ignore = "OR IGNORE" if s.get_bind().dialect.name == "sqlite" else "IGNORE"
        s.execute(insert(SiteState).prefix_with(ignore).values(
            site_id=site_id, refused=0, applied=0, outbox_backlog=backlog or 0,
            last_contact=now))
    # only leases past their middle are renewed: a site calling every second does not
    # rewrite every row it holds every second
    s.execute(update(Task).where(Task.site_id == site_id, Task.status == "processing",
                                 Task.claimed_by == holder(site_id),
                                 Task.lease_expires < now + lease_seconds / 2)
              .values(lease_expires=now + lease_seconds))


def renew_after_start(s: Session, now: float, lease_seconds: float) -> int:
    """At the master's start: every task a site holds gets a full lease from now. While
    the master was down its sites could not call; their leases must not run out for
    that."""
    return changed(s, update(Task).where(
        Task.status == "processing", Task.claimed_by.like("site:%"),
        Task.lease_expires < now + lease_seconds).values(lease_expires=now + lease_seconds))


def _limit(resources: dict[str, Any], name: str, default: float) -> float:
    value = resources.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise InvalidParams(f"resources.{name} must be a number >= 0, got {value!r}")
    return float(value)


def hand_out(s: Session, site_id: str, resources: dict[str, Any], num: int, now: float,
             lease_seconds: float, version: str) -> dict[str, Any]:
    """Up to ``num`` queued tasks that fit ``resources`` (each task's requirement at most
    the site's cpu, gpu, memory, disk, time; absent: no limit but gpu 0), held by the site
    from now on, and every row the site needs to run them."""
    if not 0 <= num <= MAX_PULL:
        raise InvalidParams(f"num must be between 0 and {MAX_PULL}, got {num}")
    touch(s, site_id, now, lease_seconds)
    if num == 0:
        return _payload(s, [], version)
    inf = NO_LIMIT
    query = (select(Task.task_id).where(
        Task.status == "queued",
        Task.req_cpu <= _limit(resources, "cpu", NO_LIMIT),
        Task.req_gpu <= _limit(resources, "gpu", 0),
        Task.req_memory <= _limit(resources, "memory", inf),
        Task.req_disk <= _limit(resources, "disk", inf),
        Task.req_time <= _limit(resources, "time", inf))
        .order_by(Task.queue_rank, Task.task_id).limit(num))
    if s.get_bind().dialect.name != "sqlite":
        query = query.with_for_update(skip_locked=True)
    ids = list(s.scalars(query))
    if not ids:
        return _payload(s, [], version)
    token = secrets.token_hex(16)
    s.execute(update(Task).where(Task.task_id.in_(ids), Task.status == "queued")
              .values(status="processing", status_changed=now, attempt=Task.attempt + 1,
                      claim=token, claimed_by=holder(site_id), site_id=site_id,
                      lease_expires=now + lease_seconds, version=version))
    held = list(s.scalars(select(Task).where(Task.claim == token).order_by(Task.task_id)))
    return _payload(s, held, version)


def _payload(s: Session, held: list[Task], version: str) -> dict[str, Any]:
    out: dict[str, Any] = {"version": version, "tasks": [], "dep_tasks": [], "jobs": [],
                           "datasets": [], "dataset_configs": [], "task_defs": [],
                           "task_def_deps": []}
    if not held:
        return out
    out["tasks"] = [_row(t, TASK_COLUMNS) for t in held]
    job_ids = sorted({t.job_id for t in held})
    held_ids = {t.task_id for t in held}
    # the complete tasks of the same jobs: what the held ones may depend on
    out["dep_tasks"] = [_row(t, TASK_COLUMNS) for t in s.scalars(
        select(Task).where(Task.job_id.in_(job_ids), Task.status == "complete"))
        if t.task_id not in held_ids]
    out["jobs"] = [{"job_id": j.job_id, "dataset_id": j.dataset_id, "job_index": j.job_index,
                    "status": j.status, "status_changed": j.status_changed}
                   for j in s.scalars(select(Job).where(Job.job_id.in_(job_ids)))]
    dataset_ids = sorted({t.dataset_id for t in held})
    out["datasets"] = [_row(d, DATASET_COLUMNS) for d in
                       s.scalars(select(Dataset).where(Dataset.dataset_id.in_(dataset_ids)))]
    out["dataset_configs"] = [{"dataset_id": c.dataset_id, "config": c.config,
                               "updated": c.updated} for c in s.scalars(
        select(DatasetConfig).where(DatasetConfig.dataset_id.in_(dataset_ids)))]
    out["task_defs"] = [{"dataset_id": d.dataset_id, "task_index": d.task_index,
                         "name": d.name, "requirements": d.requirements}
                        for d in s.scalars(select(TaskDef)
                                           .where(TaskDef.dataset_id.in_(dataset_ids)))]
    # dependencies inside the dataset only: a task is handed out once all its
    # dependencies are complete, and the other datasets' tasks stay at the master (with
    # them, a client could never release a task it runs again after a local failure)
    out["task_def_deps"] = [{"dataset_id": d.dataset_id, "task_index": d.task_index,
                             "dep_dataset_id": d.dep_dataset_id,
                             "dep_task_index": d.dep_task_index}
                            for d in s.scalars(select(TaskDefDep).where(
                                TaskDefDep.dataset_id.in_(dataset_ids),
                                TaskDefDep.dep_dataset_id == TaskDefDep.dataset_id))]
    return out


def _read_cursor(since: float | dict[str, Any] | None,
                 now: float) -> tuple[float, tuple[float, str] | None, float]:
    """``(floor, after, began)`` of a ``master_get_tables`` cursor: the rows changed after
    ``floor`` are wanted, continuing after the row ``after`` (``(status_changed,
    task_id)``) while a pass pages, and the pass began at ``began``."""
    if since is None:
        return -1.0, None, now
    if not isinstance(since, dict):  # a plain time: the cursor of the first protocol
        return float(since) - OVERLAP, None, now
    extra = sorted(set(since) - {"since", "after", "began"})
    floor, after, began = since.get("since"), since.get("after"), since.get("began")
    if extra or not _finite(floor) or not (began is None or _finite(began)):
        raise InvalidParams("since must be null or the cursor of the previous answer",
                            {"since": since})
    if after is None:
        return float(floor), None, now  # type: ignore[arg-type]
    if (not isinstance(after, list) or len(after) != 2 or not _finite(after[0])
            or not isinstance(after[1], str) or len(after[1]) > 32 or began is None):
        raise InvalidParams("since.after must be [status_changed, task_id] of the last row "
                            "sent, with since.began", {"since": since})
    return float(floor), (float(after[0]), after[1]), float(began)  # type: ignore[arg-type]


def _finite(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and -NO_LIMIT < value < NO_LIMIT)


def tables_since(s: Session, site_id: str, tables: list[str],
                 since: float | dict[str, Any] | None, now: float) -> dict[str, Any]:
    """What changed at the master for this site since the cursor ``since`` (null: from the
    start): its tasks (whether it still holds each), the datasets it works on, their
    configs. Pass the answer's ``cursor`` as the next ``since``.

    Tasks come in ``(status_changed, task_id)`` order, at most DOWN_LIMIT per answer. A
    full answer's cursor goes on after its last row, so a pass over any number of rows
    with one time (a dataset suspended at once) always moves on. The cursor of the answer
    that ends a pass starts the next pass OVERLAP seconds before the first began: a row
    whose transaction committed late, with an earlier time, is sent then."""
    unknown = sorted(set(tables) - set(DOWN_TABLES))
    if unknown:
        raise InvalidParams(f"unknown tables {unknown}; choose from {list(DOWN_TABLES)}",
                            {"unknown": unknown})
    floor, after, began = _read_cursor(since, now)
    cursor: dict[str, Any] = {"since": began - OVERLAP, "after": None, "began": None}
    out: dict[str, Any] = {}
    if "tasks" in tables:
        query = (select(Task.task_id, Task.dataset_id, Task.status, Task.attempt,
                        Task.claimed_by, Task.failures, Task.status_changed)
                 .where(Task.site_id == site_id, Task.status_changed > floor))
        if after is not None:
            query = query.where(or_(Task.status_changed > after[0], and_(
                Task.status_changed == after[0], Task.task_id > after[1])))
        rows = list(s.execute(query.order_by(Task.status_changed, Task.task_id)
                              .limit(DOWN_LIMIT)))
        if len(rows) == DOWN_LIMIT:
            cursor = {"since": floor, "after": [rows[-1].status_changed, rows[-1].task_id],
                      "began": began}
        mine = holder(site_id)
        out["tasks"] = [{"task_id": r.task_id, "dataset_id": r.dataset_id,
                         "status": r.status, "attempt": r.attempt, "failures": r.failures,
                         "held": r.claimed_by == mine and r.status == "processing"}
                        for r in rows]
    if "datasets" in tables or "dataset_configs" in tables:
        dataset_ids = list(s.scalars(
            select(Task.dataset_id).where(Task.site_id == site_id, Task.status == "processing",
                                          Task.claimed_by == holder(site_id)).distinct()))
        if "datasets" in tables:
            out["datasets"] = [_row(d, DATASET_COLUMNS) for d in s.scalars(
                select(Dataset).where(Dataset.dataset_id.in_(dataset_ids)))]
        if "dataset_configs" in tables:
            out["dataset_configs"] = [
                {"dataset_id": c.dataset_id, "config": c.config, "updated": c.updated}
                for c in s.scalars(select(DatasetConfig).where(
                    DatasetConfig.dataset_id.in_(dataset_ids), DatasetConfig.updated > floor))]
    out["cursor"] = cursor
    return out


def site_status(s: Session, now: float) -> list[dict[str, Any]]:
    """Every registered site: last contact, tasks held, outbox backlog, changes applied and
    refused, clock offset, and its latest refusals."""
    held = dict(s.execute(select(Task.site_id, func.count()).where(
        Task.site_id.is_not(None), Task.status == "processing",
        Task.claimed_by.like("site:%")).group_by(Task.site_id)).tuples().all())
    states = {st.site_id: st for st in s.scalars(select(SiteState))}
    out = []
    for site in s.scalars(select(Site).order_by(Site.name)):
        st = states.get(site.site_id)
        refusals = [{"created": r.created, "table": r.table_name, "key": r.row_key,
                     "reason": r.reason} for r in s.scalars(
            select(SiteRefusal).where(SiteRefusal.site_id == site.site_id)
            .order_by(SiteRefusal.refusal_id.desc()).limit(10))]
        out.append({
            "site_id": site.site_id, "name": site.name,
            "last_contact": st.last_contact if st else None,
            "seconds_since_contact": (now - st.last_contact) if st and st.last_contact
            else None,
            "tasks_held": int(held.get(site.site_id, 0)),
            "outbox_backlog": st.outbox_backlog if st else 0,
            "applied": st.applied if st else 0,
            "refused": st.refused if st else 0,
            "clock_offset": st.clock_offset if st else None,
            "recent_refusals": refusals,
        })
    return out
