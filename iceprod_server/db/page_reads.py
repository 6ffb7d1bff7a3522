"""Read units of work behind the dataset, job, task and log pages.

Each page costs one hop to the database pool: these functions put together what a page
shows from the reads in :mod:`iceprod_server.db.reads`, plus what only the pages need
(the owner's id, to show action buttons; the tasks a task depends on; the newest log of a
name). Everything is bounded: counts come from ``task_counts``, lists are keyset pages.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import and_, func, literal, literal_column, or_, select
from sqlalchemy.orm import Session

from iceprod_server.db import reads
from iceprod_server.db.models import (
    Dataset,
    DatasetConfig,
    Job,
    Task,
    TaskCount,
    TaskDef,
    TaskDefDep,
    TaskLog,
    TaskStat,
    TaskStatHour,
    User,
)
from iceprod_server.errors import InvalidParams, NotFound

# runtime statistics come from this many of a dataset's most recent attempts
STATS_SAMPLE = 1000
# a job status filter with fewer matches than this reads them through the status index
JOB_PROBE = 10_000
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


def recent_stats(s: Session, dataset_id: str) -> dict[str, Any]:
    """Runtime statistics for the dataset page, at a cost that does not grow with the
    dataset: the attempts finished and failed over all time (from the hourly counters),
    and per task name the mean, percentiles, min and max of ``time_used`` over the latest
    :data:`STATS_SAMPLE` attempts."""
    names = dict(s.execute(select(TaskDef.task_index, TaskDef.name)
                           .where(TaskDef.dataset_id == dataset_id)
                           .order_by(TaskDef.task_index)).all())
    finished, failed = s.execute(
        select(func.coalesce(func.sum(TaskStatHour.complete), 0),
               func.coalesce(func.sum(TaskStatHour.failed), 0))
        .where(TaskStatHour.dataset_id == dataset_id)).one()
    recent = (select(TaskStat.task_id, TaskStat.error, TaskStat.time_used)
              .where(TaskStat.dataset_id == dataset_id)
              .order_by(TaskStat.created.desc()).limit(STATS_SAMPLE).subquery())
    times: dict[int, list[float]] = {i: [] for i in names}
    errors: dict[int, int] = {i: 0 for i in names}
    for index, error, used in s.execute(
            select(Task.task_index, recent.c.error, recent.c.time_used)
            .join(recent, Task.task_id == recent.c.task_id)):
        if error:
            errors[index] = errors.get(index, 0) + 1
        elif used is not None:
            times.setdefault(index, []).append(float(used))
    by_name: dict[str, dict[str, Any]] = {}
    for index, name in names.items():
        values = sorted(times.get(index, []))
        by_name[name] = {
            "count": len(values), "failed": errors.get(index, 0),
            "mean": sum(values) / len(values) if values else None,
            "min": values[0] if values else None, "max": values[-1] if values else None,
            "p50": reads.percentile(values, 0.5), "p90": reads.percentile(values, 0.9)}
    return {"finished": int(finished), "failed": int(failed),
            "sample": sum(v["count"] + v["failed"] for v in by_name.values()),
            "by_name": by_name}


def dataset_page(s: Session, dataset_id: str, hours: int = 24) -> dict[str, Any]:
    """Everything the dataset page shows: the dataset (with ``owner_id``), its config as
    stored, its DIF-plus record (IceProd 2's, when one was submitted), task counts by
    status and by task name, runtime stats and throughput.
    ``dataset_id`` may also be the dataset number, as may the other pages' ones."""
    dataset_id = resolve_dataset(s, dataset_id)
    dataset = reads.get_dataset(s, dataset_id)
    dataset["owner_id"] = _owner_id(s, dataset_id)
    row = s.execute(select(DatasetConfig.config, DatasetConfig.difplus)
                    .where(DatasetConfig.dataset_id == dataset_id)).first()
    text, difplus = row if row is not None else (None, None)
    return {"dataset": dataset,
            "config": json.loads(text) if text else None,
            "difplus": difplus,
            "counts": reads.task_counts(s, dataset_id),
            "by_name": reads.task_counts_by_name(s, dataset_id),
            "stats": recent_stats(s, dataset_id),
            "throughput": reads.throughput(s, dataset_id, hours)}


def dataset_header(s: Session, dataset_id: str) -> dict[str, Any]:
    """The dataset (with ``owner_id``) and its task counts by name: the head of the job
    and task lists."""
    dataset = reads.get_dataset(s, dataset_id)
    dataset["owner_id"] = _owner_id(s, dataset_id)
    dataset["by_name"] = reads.task_counts_by_name(s, dataset_id)
    return dataset


def _pending_jobs(dataset: dict[str, Any]) -> int:
    if dataset["status"] == "truncated":
        return 0
    return max(0, dataset["njobs"] - dataset["jobs_materialized"])


def _matching(dataset: dict[str, Any], status: str | None,
              task_name: str | None) -> dict[str, int]:
    """Task rows of the dataset by state, for a filter, from the counters (where tasks of
    jobs not made yet count as idle: they have no rows, so they are left out here)."""
    pending = _pending_jobs(dataset)
    out: dict[str, int] = {}
    for name, counts in dataset["by_name"].items():
        if task_name is not None and name != task_name:
            continue
        for state, n in counts.items():
            n -= pending if state == "idle" else 0
            if (status is None or state == status) and n > 0:
                out[state] = out.get(state, 0) + n
    return out


def _keyset(s: Session, stmt: Any, column: Any, index: str, few: bool,
            after: Any) -> Any:
    """``stmt`` ordered by ``column``, after the cursor ``after`` (None: from the start).

    With many matches, walking ``index`` (which holds the order) finds a page quickly;
    MariaDB is told to, as it otherwise reads the index from the dataset's first row and
    filters. With few matches, reading them through the filter's index and sorting is
    quicker, but SQLite would still walk the ordered index, reading the whole dataset to
    find them; a unary ``+`` hides the column from its planner.
    """
    key = column
    if few and s.get_bind().dialect.name == "sqlite":
        key = literal_column(f"+{column.table.name}.{column.name}")
    if not few:
        for dialect in ("mysql", "mariadb"):
            stmt = stmt.with_hint(column.table, f"FORCE INDEX ({index})", dialect_name=dialect)
    if after is not None:
        stmt = stmt.where(key > after)
    return stmt.order_by(key)


def jobs_page(s: Session, dataset_id: str, status: str | None = None, limit: int = 100,
              after: str | None = None) -> dict[str, Any]:
    """A page of the dataset's jobs by job index, each with its tasks' names and states;
    ``next`` is the job index to pass as ``after`` for the following page."""
    dataset_id = resolve_dataset(s, dataset_id)
    dataset = dataset_header(s, dataset_id)
    limit = reads._limit(limit)
    try:
        after_index = int(after) if after else -1
    except ValueError as e:
        raise InvalidParams(f"bad page cursor {after!r}") from e
    stmt = select(Job).where(Job.dataset_id == dataset_id)
    few = False
    if status is not None:
        stmt = stmt.where(Job.status == status)
        # no counter of jobs by status: a bounded look at the status index tells
        probe = (select(literal(1)).where(Job.dataset_id == dataset_id, Job.status == status)
                 .limit(JOB_PROBE).subquery())
        few = (s.scalar(select(func.count()).select_from(probe)) or 0) < JOB_PROBE
    stmt = _keyset(s, stmt, Job.job_index, "uq_jobs_dataset_index", few,
                   after_index if after_index >= 0 else None)
    rows = list(s.scalars(stmt.limit(limit + 1)))
    items = [reads._job_dict(j) for j in rows[:limit]]
    by_job: dict[str, list[dict[str, Any]]] = {j["job_id"]: [] for j in items}
    if by_job:
        for job_id, task_id, name, task_status in s.execute(
                select(Task.job_id, Task.task_id, Task.name, Task.status)
                .where(Task.job_id.in_(list(by_job))).order_by(Task.job_id, Task.task_index)):
            by_job[job_id].append({"task_id": task_id, "name": name, "status": task_status})
    for job in items:
        job["tasks"] = by_job[job["job_id"]]
    return {"items": items, "dataset": dataset,
            "next": str(items[-1]["job_index"]) if len(rows) > limit else None}


def tasks_page(s: Session, dataset_id: str, status: str | None = None,
               task_name: str | None = None, limit: int = 100,
               after: str | None = None) -> dict[str, Any]:
    """A page of the dataset's tasks by id, filtered by status and task name, with
    ``matching``: how many tasks the whole filter holds, by state."""
    dataset_id = resolve_dataset(s, dataset_id)
    dataset = dataset_header(s, dataset_id)
    limit = reads._limit(limit)
    matching = _matching(dataset, status, task_name)
    total = sum(_matching(dataset, None, None).values())
    page: dict[str, Any] = {"items": [], "next": None, "dataset": dataset,
                            "matching": matching}
    wanted = sum(matching.values())
    if not wanted:
        return page
    stmt = select(Task).where(Task.dataset_id == dataset_id)
    if status is not None:
        stmt = stmt.where(Task.status == status)
    if task_name is not None:
        # by index, not name: (dataset, status, task_index) is one index
        index = s.scalar(select(TaskDef.task_index).where(TaskDef.dataset_id == dataset_id,
                                                          TaskDef.name == task_name))
        stmt = stmt.where(Task.task_index == index)
    # walking the dataset in id order finds a page after about limit * total / wanted
    # rows; reading the matches through the status index and sorting costs ``wanted``
    few = status is not None and wanted * wanted < (limit + 1) * total
    stmt = _keyset(s, stmt, Task.task_id, "ix_tasks_dataset_id", few, after)
    rows = list(s.scalars(stmt.limit(limit + 1)))
    page["items"] = [reads._task_dict(t) for t in rows[:limit]]
    page["next"] = rows[limit - 1].task_id if len(rows) > limit else None
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
