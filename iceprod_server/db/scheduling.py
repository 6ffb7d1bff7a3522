"""The scheduler's units of work, each set-based and safe to run from several processes.

Every step selects a bounded batch of candidate ids, then changes them with a conditional
UPDATE that repeats the condition, so two processes running the same step at once change each
row at most once. Materialising jobs is guarded by a compare-and-set on the dataset's
``jobs_materialized`` counter and by the unique (dataset, job index) constraint.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import (
    and_,
    bindparam,
    case,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session, aliased

from iceprod_server.db.ids import new_ids
from iceprod_server.db.models import (
    Dataset,
    Group,
    Job,
    JsonCol,
    Task,
    TaskCount,
    TaskDef,
    TaskDefDep,
    TaskStat,
)
from iceprod_server.db.tasks import Backoff
from iceprod_server.db.util import changed
from iceprod_server.requirements import os_column

LIVE = ("idle", "waiting", "queued", "processing", "reset", "resume")
# the stats of an attempt whose lease ran out
LOST = {"error": "lost contact", "reason": "lease expired"}
FINAL = ("complete", "failed")


def materialize_jobs(s: Session, batch: int, low_water: int) -> int:
    """Create the next jobs of processing datasets whose live tasks ran low.

    A dataset with ten million jobs gets rows only as its queue needs them.
    """
    made = 0
    datasets = s.execute(
        select(Dataset.dataset_id, Dataset.njobs, Dataset.jobs_materialized, Dataset.ntasks)
        .where(Dataset.status == "processing", Dataset.jobs_materialized < Dataset.njobs)
        .order_by(Dataset.priority.desc(), Dataset.dataset_id)
    ).all()
    for ds in datasets:
        live = s.scalar(select(func.sum(TaskCount.n))
                        .where(TaskCount.dataset_id == ds.dataset_id,
                               TaskCount.status.in_(("idle", "waiting", "queued"))))
        if live and live >= low_water:
            continue
        count = min(batch, ds.njobs - ds.jobs_materialized)
        start = ds.jobs_materialized
        claimed = changed(s, update(Dataset).where(
            Dataset.dataset_id == ds.dataset_id,
            Dataset.jobs_materialized == start, Dataset.status == "processing",
        ).values(jobs_materialized=start + count))
        if claimed != 1:
            continue  # another process got there first
        made += _insert_jobs(s, ds.dataset_id, start, count)
    return made


def _insert_jobs(s: Session, dataset_id: str, start: int, count: int) -> int:
    defs = s.execute(select(TaskDef).where(TaskDef.dataset_id == dataset_id)
                     .order_by(TaskDef.task_index)).scalars().all()
    now = time.time()
    job_ids = new_ids(count)
    s.execute(insert(Job), [
        {"job_id": jid, "dataset_id": dataset_id, "job_index": start + i,
         "status": "processing", "status_changed": now}
        for i, jid in enumerate(job_ids)
    ])
    task_ids = iter(new_ids(count * len(defs)))
    rows = []
    for i, jid in enumerate(job_ids):
        for d in defs:
            req: dict[str, Any] = d.requirements or {}
            rows.append({
                "task_id": next(task_ids), "dataset_id": dataset_id, "job_id": jid,
                "job_index": start + i, "task_index": d.task_index, "name": d.name,
                "status": "idle", "status_changed": now, "queue_rank": 0.0, "attempt": 0,
                "failures": 0, "req_cpu": int(req.get("cpu", 1)),
                "req_gpu": int(req.get("gpu", 0)),
                "req_memory": float(req.get("memory", 1.0)),
                "req_disk": float(req.get("disk", 1.0)),
                "req_time": float(req.get("time", 1.0)), "req_os": os_column(req.get("os")),
            })
    for i in range(0, len(rows), 2000):
        s.execute(insert(Task), rows[i:i + 2000])
    return count


def expire_leases(s: Session, now: float, max_resets: int, batch: int = 1000,
                  backoff: Backoff = Backoff()) -> int:
    """Processing tasks whose lease ran out count a failure ("lost contact"), set-based:
    one statement per (debug, failures) group of the batch, which sets the back-off."""
    rows = s.execute(
        select(Task.task_id, Task.failures, Dataset.debug)
        .join(Dataset, Dataset.dataset_id == Task.dataset_id)
        .where(Task.status == "processing", Task.lease_expires < now)
        .limit(batch)
    ).all()
    count = 0
    for debug, failures in sorted({(bool(r.debug), r.failures) for r in rows}):
        ids = [r.task_id for r in rows if (bool(r.debug), r.failures) == (debug, failures)]
        expired = and_(Task.task_id.in_(ids), Task.status == "processing",
                       Task.lease_expires < now, Task.failures == failures)
        s.execute(insert(TaskStat).from_select(
            ["task_id", "dataset_id", "attempt", "created", "error", "hostname", "stats"],
            select(Task.task_id, Task.dataset_id, Task.attempt, literal(now), literal(True),
                   literal(""), literal(LOST, JsonCol)).where(expired)))
        status = literal("suspended") if debug else case(
            (Task.failures + 1 >= max_resets, "failed"), else_="reset")
        count += changed(s,
            update(Task).where(expired)
            .values(status=status, status_changed=now, failures=Task.failures + 1,
                    lease_expires=None, claim=None, claimed_by=None,
                    retry_after=now + backoff.after(failures + 1))
        )
    return count


def return_to_idle(s: Session, batch: int, now: float | None = None) -> int:
    """resume tasks, and reset tasks whose retry back-off is over, go back to idle, where
    dependencies are checked again."""
    now = time.time() if now is None else now
    due = or_(Task.status == "resume",
              and_(Task.status == "reset",
                   or_(Task.retry_after.is_(None), Task.retry_after <= now)))
    ids = s.scalars(select(Task.task_id).where(due).limit(batch)).all()
    if not ids:
        return 0
    return changed(s, update(Task).where(Task.task_id.in_(ids), due)
                   .values(status="idle", status_changed=time.time(), claim=None,
                           claimed_by=None, lease_expires=None, retry_after=None))


def release_ready(s: Session, batch: int) -> int:
    """idle -> waiting for tasks of processing datasets whose dependencies are complete."""
    dep = aliased(Task)
    # a task is blocked while one of its dependencies has no complete task in its job
    dep_complete = exists().where(
        dep.dataset_id == TaskDefDep.dep_dataset_id,
        dep.job_index == Task.job_index,
        dep.task_index == TaskDefDep.dep_task_index,
        dep.status == "complete",
    ).correlate(Task, TaskDefDep)
    blocked = exists().where(
        TaskDefDep.dataset_id == Task.dataset_id,
        TaskDefDep.task_index == Task.task_index,
        ~dep_complete,
    ).correlate(Task)
    ids = s.scalars(
        select(Task.task_id).join(Dataset, Dataset.dataset_id == Task.dataset_id)
        .where(Task.status == "idle", Dataset.status == "processing", ~blocked)
        .limit(batch)
    ).all()
    if not ids:
        return 0
    return changed(s, update(Task).where(Task.task_id.in_(ids), Task.status == "idle")
                   .values(status="waiting", status_changed=time.time()))


def queue_waiting(s: Session, queue_depth: int) -> int:
    """waiting -> queued, up to the queue depth, datasets by effective priority.

    The effective priority is the dataset's priority plus its group's; the queue rank is its
    negation, so claims (which read the queue in rank order) take the highest first and, at
    equal priority, the oldest task.
    """
    queued = s.scalar(select(func.sum(TaskCount.n)).where(TaskCount.status == "queued"))
    room = queue_depth - int(queued or 0)
    if room <= 0:
        return 0
    effective = Dataset.priority + func.coalesce(Group.priority, 0.0)
    candidates = s.execute(
        select(Dataset.dataset_id, effective.label("effective"))
        .outerjoin(Group, Group.group_id == Dataset.group_id)
        .where(Dataset.status == "processing",
               exists().where(Task.dataset_id == Dataset.dataset_id,
                              Task.status == "waiting"))
        .order_by(effective.desc(), Dataset.dataset_id)
    ).all()
    total = 0
    now = time.time()
    for ds in candidates:
        if room <= 0:
            break
        ids = s.scalars(select(Task.task_id)
                        .where(Task.dataset_id == ds.dataset_id, Task.status == "waiting")
                        .order_by(Task.task_id).limit(min(room, 5000))).all()
        n = changed(s, update(Task).where(Task.task_id.in_(ids), Task.status == "waiting")
                    .values(status="queued", status_changed=now,
                            queue_rank=-float(ds.effective)))
        room -= n
        total += n
    return total


def effective_priority(s: Session, dataset: Dataset) -> float:
    """A dataset's priority plus its group's: what the queue is ordered by."""
    group = 0.0
    if dataset.group_id is not None:
        group = float(s.scalar(select(Group.priority)
                               .where(Group.group_id == dataset.group_id)) or 0.0)
    return float(dataset.priority) + group


def expire_queued(s: Session, now: float, timeout: float, batch: int) -> int:
    """Tasks left waiting or queued too long go back to idle."""
    ids = s.scalars(select(Task.task_id)
                    .where(Task.status.in_(("waiting", "queued")),
                           Task.status_changed < now - timeout).limit(batch)).all()
    if not ids:
        return 0
    return changed(s, update(Task).where(Task.task_id.in_(ids),
                                         Task.status.in_(("waiting", "queued")),
                                         Task.status_changed < now - timeout)
                   .values(status="idle", status_changed=now))


def _derive(counts: dict[str, int], unmade: int = 0) -> str:
    """A job's (or dataset's) status from its tasks' counts by status; ``unmade`` counts
    the tasks of a dataset's jobs not materialised yet, which are still to run.

    Idle tasks do not keep a job with failures processing: once nothing else is running,
    what is left idle waits on a failed dependency and would wait forever.
    """
    total = sum(counts.values()) + unmade
    live = sum(counts.get(s, 0) for s in LIVE) + unmade
    active = live - counts.get("idle", 0)
    if total and counts.get("complete", 0) == total:
        return "complete"
    if counts.get("suspended", 0) and not live:
        return "suspended"
    if counts.get("failed", 0) and not active:
        return "errors"
    return "processing"


Cursor = tuple[float, str]


_RECENT = (select(Task.job_id, Task.status_changed, Task.task_id)
           # the first term lets the database seek the index
           .where(Task.status_changed >= bindparam("b_ts"),
                  or_(Task.status_changed > bindparam("b_ts"),
                      and_(Task.status_changed == bindparam("b_ts"),
                           Task.task_id > bindparam("b_tid"))))
           .order_by(Task.status_changed, Task.task_id).limit(bindparam("b_limit")))


def derive_status(s: Session, since: Cursor, derived: dict[str, float] | None = None,
                  batch: int = 5000
                  ) -> tuple[int, int, Cursor | None, list[tuple[str, float]]]:
    """Recompute the status of jobs and datasets whose tasks changed after ``since``, a
    (status_changed, task_id) cursor.

    ``derived`` maps task ids to the status_changed of their changes derived already; those
    are skipped.

    Returns the jobs and datasets changed, the cursor to continue from when the batch
    was full (None when this call saw every change), and the (task_id, status_changed)
    changes derived now.
    """
    ts, tid = since
    recent = s.connection().execute(_RECENT, {"b_ts": ts, "b_tid": tid,
                                              "b_limit": batch}).all()
    next_since = ((recent[-1].status_changed, recent[-1].task_id) if len(recent) == batch
                  else None)
    if derived:
        recent = [r for r in recent if derived.get(r.task_id) != r.status_changed]
    job_ids = sorted({r.job_id for r in recent})
    jobs_changed = 0
    dataset_ids: set[str] = set()
    now = time.time()
    if job_ids:
        per_job: dict[str, dict[str, int]] = {}
        for job_id, status, n in s.execute(
                select(Task.job_id, Task.status, func.count())
                .where(Task.job_id.in_(job_ids)).group_by(Task.job_id, Task.status)):
            per_job.setdefault(job_id, {})[status] = n
        by_status: dict[str, list[str]] = {}
        for job_id, counts in per_job.items():
            by_status.setdefault(_derive(counts), []).append(job_id)
        for status, ids in by_status.items():
            jobs_changed += changed(s, update(Job).where(Job.job_id.in_(ids),
                                                         Job.status != status)
                                    .values(status=status, status_changed=now))
        dataset_ids.update(s.scalars(select(Job.dataset_id).where(Job.job_id.in_(job_ids))
                                     .distinct()))
    datasets_changed = sum(_derive_dataset(s, d, now) for d in sorted(dataset_ids))
    return (jobs_changed, datasets_changed, next_since,
            [(r.task_id, r.status_changed) for r in recent])


def _derive_dataset(s: Session, dataset_id: str, now: float) -> int:
    ds = s.get(Dataset, dataset_id)
    if ds is None or ds.status == "suspended":
        return 0  # a suspended dataset stays so until a human resumes it
    counts = {status: int(n) for status, n in s.execute(
        select(TaskCount.status, func.sum(TaskCount.n))
        .where(TaskCount.dataset_id == dataset_id).group_by(TaskCount.status)) if n}
    unmade = 0
    if ds.status != "truncated" and ds.jobs_materialized < ds.njobs:
        unmade = (ds.njobs - ds.jobs_materialized) * ds.ntasks
    derived = _derive(counts, unmade)
    if ds.status == "truncated" and derived == "processing":
        return 0
    if derived == "processing" and ds.status == "processing":
        return 0
    if derived == ds.status:
        return 0
    # The counts were read earlier in this transaction; a human's resume or reset that
    # committed since then must not be overwritten with a state that stops the dataset
    # (a dataset derived suspended stays so until a human acts again), so the tasks that
    # decided it are looked at once more, by the UPDATE itself.
    blockers = {"complete": Task.status != "complete",
                "suspended": Task.status.in_(LIVE),
                "errors": Task.status.in_([s for s in LIVE if s != "idle"])}.get(derived)
    conditions = [Dataset.dataset_id == dataset_id, Dataset.status == ds.status]
    if blockers is not None:
        conditions.append(~exists().where(Task.dataset_id == dataset_id, blockers))
    return changed(s, update(Dataset).where(*conditions)
                   .values(status=derived, status_changed=now))

