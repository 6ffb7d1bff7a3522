"""Read queries behind the ``public_*`` methods: datasets, jobs, tasks, counts and stats.

Counts come from the trigger-maintained ``task_counts`` and ``task_stat_hours``; lists are
keyset-paginated by id (``after`` is the last id of the previous page, ``next`` the
``after`` of the following one); stats
that need every row (percentiles) use a bounded sample of the most recent rows. Tasks of
jobs that are not materialised yet count as ``idle``, unless the dataset is truncated.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from iceprod_server.db.models import (
    Dataset,
    DatasetConfig,
    Group,
    Job,
    Site,
    Task,
    TaskCount,
    TaskDef,
    TaskLog,
    TaskStat,
    TaskStatHour,
    User,
)
from iceprod_server.errors import InvalidParams, NotFound
from iceprod_server.requirements import os_from_column

MAX_LIMIT = 1000
LOG_TAIL_LINES = 40
MAX_ATTEMPTS_SHOWN = 100
# percentiles of time_used come from at most this many recent attempts per task name
STATS_SAMPLE = 2000
MAX_THROUGHPUT_HOURS = 24 * 31


def _dataset(s: Session, dataset_id: str) -> Dataset:
    dataset = s.get(Dataset, dataset_id)
    if dataset is None:
        raise NotFound(f"no dataset {dataset_id}", {"dataset_id": dataset_id})
    return dataset


def _limit(limit: int) -> int:
    if limit < 1:
        raise InvalidParams("limit must be at least 1")
    return min(limit, MAX_LIMIT)


def _page(s: Session, stmt: Select[Any], id_col: Any, limit: int, after: str | None,
          to_dict: Any) -> dict[str, Any]:
    limit = _limit(limit)
    if after is not None:
        stmt = stmt.where(id_col > after)
    rows = list(s.execute(stmt.order_by(id_col).limit(limit + 1)))
    items = [to_dict(*row) for row in rows[:limit]]
    return {"items": items, "next": getattr(rows[limit - 1][0], id_col.key)
            if len(rows) > limit else None}


def datasets_by_status(s: Session) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for dataset_id, status in s.execute(select(Dataset.dataset_id, Dataset.status)
                                        .order_by(Dataset.dataset_num)):
        out.setdefault(status, []).append(dataset_id)
    return out


def site_id_for(s: Session, site: str) -> str:
    """The id of the site whose id or name is ``site``."""
    found = s.scalar(select(Site.site_id).where(Site.site_id == site))
    found = found or s.scalar(select(Site.site_id).where(Site.name == site))
    if found is None:
        raise NotFound(f"no site {site!r}", {"site": site})
    return found


def _unmaterialized_jobs(dataset: Dataset) -> int:
    if dataset.status == "truncated":
        return 0
    return max(0, dataset.njobs - dataset.jobs_materialized)


def task_counts(s: Session, dataset_id: str) -> dict[str, int]:
    """Tasks of the dataset by status, zero counts left out (from the maintained counters)."""
    dataset = _dataset(s, dataset_id)
    counts: dict[str, int] = {}
    for status, n in s.execute(
            select(TaskCount.status, func.sum(TaskCount.n))
            .where(TaskCount.dataset_id == dataset_id).group_by(TaskCount.status)):
        counts[status] = int(n)
    pending = _unmaterialized_jobs(dataset) * dataset.ntasks
    if pending:
        counts["idle"] = counts.get("idle", 0) + pending
    return {k: v for k, v in counts.items() if v}


def task_counts_by_name(s: Session, dataset_id: str) -> dict[str, dict[str, int]]:
    dataset = _dataset(s, dataset_id)
    names: dict[int, str] = {i: n for i, n in s.execute(
        select(TaskDef.task_index, TaskDef.name).where(TaskDef.dataset_id == dataset_id))}
    out: dict[str, dict[str, int]] = {name: {} for name in names.values()}
    for index, status, n in s.execute(
            select(TaskCount.task_index, TaskCount.status, func.sum(TaskCount.n))
            .where(TaskCount.dataset_id == dataset_id)
            .group_by(TaskCount.task_index, TaskCount.status)):
        if n:
            out.setdefault(names.get(index, str(index)), {})[status] = int(n)
    pending = _unmaterialized_jobs(dataset)
    if pending:
        for name in names.values():
            out[name]["idle"] = out[name].get("idle", 0) + pending
    return out


def system_task_counts(s: Session) -> dict[str, int]:
    """Tasks of every dataset by status, zero counts left out."""
    counts = {status: int(n) for status, n in s.execute(
        select(TaskCount.status, func.sum(TaskCount.n)).group_by(TaskCount.status)) if n}
    pending = s.scalar(select(func.sum((Dataset.njobs - Dataset.jobs_materialized)
                                       * Dataset.ntasks))
                       .where(Dataset.status != "truncated",
                              Dataset.jobs_materialized < Dataset.njobs))
    if pending:
        counts["idle"] = counts.get("idle", 0) + int(pending)
    return counts


def _dataset_dict(d: Dataset, owner: str | None, group: str | None) -> dict[str, Any]:
    return {"dataset_id": d.dataset_id, "dataset_num": d.dataset_num,
            "description": d.description, "owner": owner, "group": group,
            "status": d.status, "priority": d.priority, "debug": d.debug, "njobs": d.njobs,
            "ntasks": d.ntasks, "jobs_materialized": d.jobs_materialized,
            "gridspec": d.gridspec, "stat_keys": d.stat_keys, "created": d.created,
            "status_changed": d.status_changed}


def _dataset_query() -> Any:
    return (select(Dataset, User.username, Group.name)
            .outerjoin(User, Dataset.owner_id == User.user_id)
            .outerjoin(Group, Dataset.group_id == Group.group_id))


def get_dataset(s: Session, dataset_id: str) -> dict[str, Any]:
    row = s.execute(_dataset_query().where(Dataset.dataset_id == dataset_id)).first()
    if row is None:
        raise NotFound(f"no dataset {dataset_id}", {"dataset_id": dataset_id})
    out = _dataset_dict(*row)
    out["tasks"] = list(s.scalars(select(TaskDef.name).where(TaskDef.dataset_id == dataset_id)
                                  .order_by(TaskDef.task_index)))
    return out


def get_dataset_config(s: Session, dataset_id: str) -> Any:
    text = s.scalar(select(DatasetConfig.config).where(DatasetConfig.dataset_id == dataset_id))
    if text is None:
        raise NotFound(f"no dataset {dataset_id}", {"dataset_id": dataset_id})
    return json.loads(text)


def list_datasets(s: Session, status: str | None = None, owner: str | None = None,
                  limit: int = 100, after: str | None = None) -> dict[str, Any]:
    stmt = _dataset_query()
    if status is not None:
        stmt = stmt.where(Dataset.status == status)
    if owner is not None:
        stmt = stmt.where(User.username == owner)
    return _page(s, stmt, Dataset.dataset_id, limit, after, _dataset_dict)


def _job_dict(j: Job) -> dict[str, Any]:
    return {"job_id": j.job_id, "dataset_id": j.dataset_id, "job_index": j.job_index,
            "status": j.status, "status_changed": j.status_changed}


def list_jobs(s: Session, dataset_id: str, status: str | None = None, limit: int = 100,
              after: str | None = None) -> dict[str, Any]:
    _dataset(s, dataset_id)
    stmt = select(Job).where(Job.dataset_id == dataset_id)
    if status is not None:
        stmt = stmt.where(Job.status == status)
    return _page(s, stmt, Job.job_id, limit, after, _job_dict)


def _task_dict(t: Task) -> dict[str, Any]:
    # the claim token and the claimant stay private to the pilot protocol
    return {"task_id": t.task_id, "dataset_id": t.dataset_id, "job_id": t.job_id,
            "job_index": t.job_index, "task_index": t.task_index, "name": t.name,
            "status": t.status, "status_changed": t.status_changed,
            "attempt": t.attempt, "failures": t.failures, "lease_expires": t.lease_expires,
            "retry_after": t.retry_after,
            "requirements": {"cpu": t.req_cpu, "gpu": t.req_gpu, "memory": t.req_memory,
                             "disk": t.req_disk, "time": t.req_time,
                             "os": os_from_column(t.req_os)}}


def list_tasks(s: Session, dataset_id: str | None = None, status: str | None = None,
               task_name: str | None = None, job_index: int | None = None,
               limit: int = 100, after: str | None = None) -> dict[str, Any]:
    stmt = select(Task)
    if dataset_id is not None:
        _dataset(s, dataset_id)
        stmt = stmt.where(Task.dataset_id == dataset_id)
    if status is not None:
        stmt = stmt.where(Task.status == status)
    if task_name is not None:
        stmt = stmt.where(Task.name == task_name)
    if job_index is not None:
        stmt = stmt.where(Task.job_index == job_index)
    return _page(s, stmt, Task.task_id, limit, after, _task_dict)


def get_job(s: Session, job_id: str) -> dict[str, Any]:
    job = s.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}", {"job_id": job_id})
    out = _job_dict(job)
    out["tasks"] = [_task_dict(t) for t in s.scalars(
        select(Task).where(Task.job_id == job_id).order_by(Task.task_index))]
    return out


def get_task(s: Session, task_id: str) -> dict[str, Any]:
    """The task, its most recent attempts, and the newest log of each name: the last
    lines as ``tail`` when the log is in the database, else its file ``path`` (under the
    data directory) for the caller to read off the event loop."""
    task = s.get(Task, task_id)
    if task is None:
        raise NotFound(f"no task {task_id}", {"task_id": task_id})
    out = _task_dict(task)
    stats = s.scalars(select(TaskStat).where(TaskStat.task_id == task_id)
                      .order_by(TaskStat.stat_id.desc()).limit(MAX_ATTEMPTS_SHOWN))
    out["attempts"] = [{"attempt": st.attempt, "created": st.created, "error": st.error,
                        "hostname": st.hostname, "time_used": st.time_used,
                        "stats": st.stats} for st in reversed(list(stats))]
    newest: dict[str, Any] = {}
    for row in s.execute(select(TaskLog.log_id, TaskLog.name, TaskLog.attempt,
                                TaskLog.created, TaskLog.size, TaskLog.path)
                         .where(TaskLog.task_id == task_id)
                         .order_by(TaskLog.created, TaskLog.log_id)):
        newest[row.name] = row
    logs = []
    for row in sorted(newest.values(), key=lambda r: r.name):
        entry: dict[str, Any] = {"name": row.name, "attempt": row.attempt,
                                 "created": row.created, "size": row.size}
        data = s.scalar(select(TaskLog.data).where(TaskLog.log_id == row.log_id))
        if data is not None:
            entry["tail"] = tail_text(data, LOG_TAIL_LINES)
        else:
            entry["path"] = row.path
        logs.append(entry)
    out["logs"] = logs
    return out


def tail_text(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.rstrip("\n").rsplit("\n", lines)[-lines:])


def tail_file(data_dir: Path, relpath: str, lines: int = LOG_TAIL_LINES,
              max_bytes: int = 1 << 20) -> str | None:
    """The last ``lines`` lines of a log file under ``data_dir``, reading at most
    ``max_bytes`` from its end; None if it is missing or outside the directory.
    Blocking: call it on the ``fs`` pool."""
    root = data_dir.resolve()
    path = (root / relpath).resolve()
    if not path.is_relative_to(root):
        return None
    try:
        with path.open("rb") as f:
            end = f.seek(0, os.SEEK_END)
            size = min(end, 64 * 1024)
            while True:
                f.seek(end - size)
                data = f.read(size)
                if size >= end or size >= max_bytes or data.count(b"\n") > lines:
                    break
                size = min(end, size * 4, max_bytes)
    except OSError:
        return None
    return tail_text(data.decode("utf-8", "replace"), lines)


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between the closest ranks of sorted ``values``."""
    if not values:
        return None
    pos = (len(values) - 1) * q
    low = int(pos)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (pos - low)


def task_stats(s: Session, dataset_id: str) -> dict[str, dict[str, Any]]:
    """Per task name: ``count``, the tasks complete (exact, from the counters); over the
    dataset's most recent attempts of all task names together (:data:`STATS_SAMPLE` times
    the number of task names, read backwards along the (dataset, created) index, so the
    cost does not grow with the dataset; a task name with few recent attempts may have
    few or none in it):
    ``failed`` attempts, and ``mean``, ``min``, ``max``, ``p50``, ``p90`` of the successful
    ones' time_used, with ``sample`` the number of successful attempts they cover."""
    _dataset(s, dataset_id)
    names: dict[int, str] = {i: n for i, n in s.execute(
        select(TaskDef.task_index, TaskDef.name).where(TaskDef.dataset_id == dataset_id)
        .order_by(TaskDef.task_index))}
    out: dict[str, dict[str, Any]] = {
        name: {"count": 0, "failed": 0, "mean": None, "min": None, "max": None,
               "p50": None, "p90": None, "sample": 0} for name in names.values()}
    for index, n in s.execute(select(TaskCount.task_index, func.sum(TaskCount.n)).where(
            TaskCount.dataset_id == dataset_id, TaskCount.status == "complete")
            .group_by(TaskCount.task_index)):
        if index in names:
            out[names[index]]["count"] = int(n)
    times: dict[int, list[float]] = {i: [] for i in names}
    recent = s.execute(
        select(Task.task_index, TaskStat.error, TaskStat.time_used)
        .join(Task, TaskStat.task_id == Task.task_id)
        .where(TaskStat.dataset_id == dataset_id)
        .order_by(TaskStat.created.desc()).limit(STATS_SAMPLE * max(1, len(names))))
    for index, error, used in recent:
        if index not in names:
            continue
        if error:
            out[names[index]]["failed"] += 1
        elif used is not None:
            times[index].append(float(used))
    for index, values in times.items():
        if values:
            values.sort()
            out[names[index]].update(
                mean=sum(values) / len(values), min=values[0], max=values[-1],
                p50=percentile(values, 0.5), p90=percentile(values, 0.9),
                sample=len(values))
    return out


def dataset_completion(s: Session, dataset_id: str) -> dict[str, Any]:
    by_status = task_counts(s, dataset_id)
    total = sum(by_status.values())
    complete = by_status.get("complete", 0)
    return {"total": total, "complete": complete,
            "fraction": complete / total if total else 0.0, "by_status": by_status}


def throughput(s: Session, dataset_id: str | None = None, hours: int = 24) -> dict[str, Any]:
    """Attempts that finished (``complete``) and that reported an error (``failed``) in
    each of the last ``hours`` hours, oldest first; the last bucket is the current hour."""
    if not 1 <= hours <= MAX_THROUGHPUT_HOURS:
        raise InvalidParams(f"hours must be from 1 to {MAX_THROUGHPUT_HOURS}")
    if dataset_id is not None:
        _dataset(s, dataset_id)
    current = int(time.time()) // 3600
    first = current - hours + 1
    stmt = (select(TaskStatHour.hour, func.sum(TaskStatHour.complete),
                   func.sum(TaskStatHour.failed))
            .where(TaskStatHour.hour >= first).group_by(TaskStatHour.hour))
    if dataset_id is not None:
        stmt = stmt.where(TaskStatHour.dataset_id == dataset_id)
    buckets = [{"start": float(h * 3600), "complete": 0, "failed": 0}
               for h in range(first, current + 1)]
    for hour, complete, failed in s.execute(stmt):
        i = int(hour) - first
        if 0 <= i < len(buckets):
            buckets[i]["complete"] += int(complete or 0)
            buckets[i]["failed"] += int(failed or 0)
    return {"hours": hours, "dataset_id": dataset_id, "buckets": buckets}
