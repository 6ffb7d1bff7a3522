"""Read units of work behind the dataset, job, task and log pages.

Each page costs one hop to the database pool: these functions put together what a page
shows from the reads in :mod:`iceprod_server.db.reads`, plus what only the pages need
(the owner's id, to show action buttons; the tasks a task depends on; the newest log of a
name). Everything is bounded: counts come from ``task_counts``, lists are keyset pages.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from iceprod_server.db import reads
from iceprod_server.db.models import (
    Dataset,
    DatasetConfig,
    Job,
    Task,
    TaskCount,
    TaskDefDep,
    TaskLog,
    User,
)
from iceprod_server.errors import InvalidParams, NotFound

# the dataset list can be sorted by these; each sort breaks ties by the dataset number
DATASET_SORTS: dict[str, Any] = {
    "number": Dataset.dataset_num,
    "status": Dataset.status,
    "priority": Dataset.priority,
    "created": Dataset.created,
}


def resolve_dataset(s: Session, ref: str) -> str:
    """The id of the dataset whose id, or else whose number, is ``ref``."""
    found = s.scalar(select(Dataset.dataset_id).where(Dataset.dataset_id == ref))
    if found is None and ref.isdigit() and len(ref) < 10:
        found = s.scalar(select(Dataset.dataset_id).where(Dataset.dataset_num == int(ref)))
    if found is None:
        raise NotFound(f"no dataset {ref}", {"dataset_id": ref})
    return found


def _owner_id(s: Session, dataset_id: str) -> str | None:
    owner: str | None = s.scalar(select(Dataset.owner_id)
                                 .where(Dataset.dataset_id == dataset_id))
    return owner


def _counts_of(s: Session, datasets: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Task counts by status for a page of datasets, in one grouped read of the counters."""
    ids = [d["dataset_id"] for d in datasets]
    out: dict[str, dict[str, int]] = {i: {} for i in ids}
    if not ids:
        return out
    for dataset_id, status, n in s.execute(
            select(TaskCount.dataset_id, TaskCount.status, func.sum(TaskCount.n))
            .where(TaskCount.dataset_id.in_(ids))
            .group_by(TaskCount.dataset_id, TaskCount.status)):
        if n:
            out[dataset_id][status] = int(n)
    for d in datasets:
        # jobs not made yet: their tasks count as idle (as in reads.task_counts)
        if d["status"] != "truncated" and d["njobs"] > d["jobs_materialized"]:
            pending = (d["njobs"] - d["jobs_materialized"]) * d["ntasks"]
            counts = out[d["dataset_id"]]
            counts["idle"] = counts.get("idle", 0) + pending
    return out


def _cursor(sort: str, d: dict[str, Any]) -> str:
    num = d["dataset_num"]
    if sort == "number":
        return str(num)
    value = d[sort] if sort == "status" else repr(float(d[sort]))
    return f"{value}~{num}"


def _after(sort: str, desc: bool, after: str) -> Any:
    """The keyset condition for the rows that come after cursor ``after``."""
    col = DATASET_SORTS[sort]
    try:
        if sort == "number":
            num = int(after)
            return col < num if desc else col > num
        text, _, num_text = after.rpartition("~")
        num = int(num_text)
        value: Any = text if sort == "status" else float(text)
    except ValueError as e:
        raise InvalidParams(f"bad page cursor {after!r}") from e
    if desc:
        return or_(col < value, and_(col == value, Dataset.dataset_num < num))
    return or_(col > value, and_(col == value, Dataset.dataset_num > num))


def dataset_list(s: Session, status: str | None = None, owner: str | None = None,
                 sort: str = "number", desc: bool = True, limit: int = 50,
                 after: str | None = None) -> dict[str, Any]:
    """A page of datasets with their task counts: ``{items, next}``; pass ``next`` as
    ``after`` for the following page. Sorted by ``sort`` (number, status, priority,
    created), then by number; newest first unless ``desc`` is false."""
    if sort not in DATASET_SORTS:
        raise InvalidParams(f"cannot sort datasets by {sort!r}")
    limit = reads._limit(limit)
    stmt = reads._dataset_query()
    if status:
        stmt = stmt.where(Dataset.status == status)
    if owner:
        stmt = stmt.where(User.username == owner)
    if after:
        stmt = stmt.where(_after(sort, desc, after))
    col = DATASET_SORTS[sort]
    order = [col.desc(), Dataset.dataset_num.desc()] if desc else [col, Dataset.dataset_num]
    if sort == "number":
        order = order[:1]
    rows = list(s.execute(stmt.order_by(*order).limit(limit + 1)))
    items = [reads._dataset_dict(*row) for row in rows[:limit]]
    counts = _counts_of(s, items)
    for item in items:
        item["counts"] = counts[item["dataset_id"]]
    return {"items": items,
            "next": _cursor(sort, items[-1]) if len(rows) > limit else None}


def dataset_page(s: Session, dataset_id: str, hours: int = 24) -> dict[str, Any]:
    """Everything the dataset page shows: the dataset (with ``owner_id``), its config as
    stored, task counts by status and by task name, runtime stats and throughput."""
    dataset = reads.get_dataset(s, dataset_id)
    dataset["owner_id"] = _owner_id(s, dataset_id)
    text = s.scalar(select(DatasetConfig.config)
                    .where(DatasetConfig.dataset_id == dataset_id))
    return {"dataset": dataset,
            "config": json.loads(text) if text else None,
            "counts": reads.task_counts(s, dataset_id),
            "by_name": reads.task_counts_by_name(s, dataset_id),
            "stats": reads.task_stats(s, dataset_id),
            "throughput": reads.throughput(s, dataset_id, hours)}


def dataset_header(s: Session, dataset_id: str) -> dict[str, Any]:
    """The dataset (with ``owner_id``) and its task counts by name: the head of the job
    and task lists."""
    dataset = reads.get_dataset(s, dataset_id)
    dataset["owner_id"] = _owner_id(s, dataset_id)
    dataset["by_name"] = reads.task_counts_by_name(s, dataset_id)
    return dataset


def jobs_page(s: Session, dataset_id: str, status: str | None = None, limit: int = 100,
              after: str | None = None) -> dict[str, Any]:
    """A page of the dataset's jobs, each with its tasks' names and states."""
    page = reads.list_jobs(s, dataset_id, status, limit, after)
    by_job: dict[str, list[dict[str, Any]]] = {j["job_id"]: [] for j in page["items"]}
    if by_job:
        for job_id, task_id, name, task_status in s.execute(
                select(Task.job_id, Task.task_id, Task.name, Task.status)
                .where(Task.job_id.in_(list(by_job))).order_by(Task.job_id, Task.task_index)):
            by_job[job_id].append({"task_id": task_id, "name": name, "status": task_status})
    for job in page["items"]:
        job["tasks"] = by_job[job["job_id"]]
    page["dataset"] = dataset_header(s, dataset_id)
    return page


def tasks_page(s: Session, dataset_id: str, status: str | None = None,
               task_name: str | None = None, limit: int = 100,
               after: str | None = None) -> dict[str, Any]:
    """A page of the dataset's tasks, filtered by status and task name."""
    page = reads.list_tasks(s, dataset_id, status, task_name, None, limit, after)
    page["dataset"] = dataset_header(s, dataset_id)
    return page


def job_page(s: Session, job_id: str) -> dict[str, Any]:
    job = reads.get_job(s, job_id)
    job["dataset"] = reads.get_dataset(s, job["dataset_id"])
    job["dataset"]["owner_id"] = _owner_id(s, job["dataset_id"])
    return job


def _dependencies(s: Session, task: dict[str, Any]) -> list[dict[str, Any]]:
    """The tasks this one waits for: same job index, in this or another dataset."""
    out = []
    for dep_dataset, dep_index in s.execute(
            select(TaskDefDep.dep_dataset_id, TaskDefDep.dep_task_index)
            .where(TaskDefDep.dataset_id == task["dataset_id"],
                   TaskDefDep.task_index == task["task_index"])
            .order_by(TaskDefDep.dep_dataset_id, TaskDefDep.dep_task_index)):
        row = s.execute(select(Task.task_id, Task.name, Task.status)
                        .where(Task.dataset_id == dep_dataset,
                               Task.job_index == task["job_index"],
                               Task.task_index == dep_index)).first()
        out.append({"dataset_id": dep_dataset, "task_index": dep_index,
                    "external": dep_dataset != task["dataset_id"],
                    "task_id": row.task_id if row else None,
                    "name": row.name if row else f"task {dep_index}",
                    "status": row.status if row else None})
    return out


def task_page(s: Session, task_id: str) -> dict[str, Any]:
    """The task with its attempts and logs (as :func:`reads.get_task`: a ``tail`` or a
    file ``path`` per log), its dependencies and its dataset."""
    task = reads.get_task(s, task_id)
    task["dependencies"] = _dependencies(s, task)
    task["dataset"] = reads.get_dataset(s, task["dataset_id"])
    task["dataset"]["owner_id"] = _owner_id(s, task["dataset_id"])
    task["job"] = {"job_id": task["job_id"],
                   "status": s.scalar(select(Job.status).where(Job.job_id == task["job_id"]))}
    return task


def log_source(s: Session, task_id: str, name: str,
               attempt: int | None = None) -> dict[str, Any]:
    """Where the newest log ``name`` of a task (of one attempt, if given) is: ``data``
    (the text, stored in the row) or ``path`` (a file under the data directory)."""
    if s.scalar(select(Task.task_id).where(Task.task_id == task_id)) is None:
        raise NotFound(f"no task {task_id}", {"task_id": task_id})
    stmt = select(TaskLog.log_id, TaskLog.attempt, TaskLog.size, TaskLog.path).where(
        TaskLog.task_id == task_id, TaskLog.name == name)
    if attempt is not None:
        stmt = stmt.where(TaskLog.attempt == attempt)
    row = s.execute(stmt.order_by(TaskLog.created.desc(), TaskLog.log_id.desc())
                    .limit(1)).first()
    if row is None:
        raise NotFound(f"task {task_id} has no log {name!r}",
                       {"task_id": task_id, "name": name})
    out: dict[str, Any] = {"attempt": row.attempt, "size": row.size, "path": row.path,
                           "data": None}
    if row.path is None:
        out["data"] = s.scalar(select(TaskLog.data).where(TaskLog.log_id == row.log_id))
    return out
