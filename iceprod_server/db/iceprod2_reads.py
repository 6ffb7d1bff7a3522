"""The reads of IceProd 2.3.2's ``public_*`` methods, in its shapes, at a bounded cost.

IceProd 2.3.2 answered some reads whole (every task id of a dataset, every config). Here each
such read first counts what it would answer, from the maintained counters or an index, and
refuses with -32602 naming ``unpaged_max_rows`` when that is more than the option allows,
before it reads a row: at ten million tasks ``public_get_task_ids`` costs one sum over the
dataset's counter rows and answers which paginated method to use instead. The rows
themselves are then read through indexes that hold exactly them.
"""

from __future__ import annotations

import json
import math
from typing import Any

from sqlalchemy import case, false, func, select, tuple_
from sqlalchemy.orm import Session

from iceprod_server.db import reads
from iceprod_server.db.graphs import iso
from iceprod_server.db.models import Dataset, DatasetConfig, Task, TaskCount, TaskDef, TaskStat
from iceprod_server.errors import InvalidParams, NotFound
from iceprod_server.states import DATASET_STATES, TASK_STATES

# cpu and gpu usage are the means over at most this many recent successful attempts
USAGE_SAMPLE = 10_000
CHUNK = 500


def too_many(what: str, limit: int, use: str) -> InvalidParams:
    reason = (f"{what}: more than unpaged_max_rows ({limit}), the most a read without "
              f"pages answers; {use}")
    return InvalidParams(reason, {"problems": [reason], "limit": limit,
                                  "option": "unpaged_max_rows"})


def _chunks(items: list[Any]) -> list[list[Any]]:
    return [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]


def _dataset(s: Session, dataset_id: str) -> Dataset:
    dataset = s.get(Dataset, dataset_id)
    if dataset is None:
        raise NotFound(f"no dataset {dataset_id}", {"dataset_id": dataset_id})
    return dataset


def _unmade_tasks(d: Dataset) -> int:
    """Tasks of jobs not made yet (none for a truncated dataset, which makes no more)."""
    if d.status == "truncated":
        return 0
    return max(0, d.njobs - d.jobs_materialized) * d.ntasks


# --- datasets and configs ---------------------------------------------------------------

def config(s: Session, dataset_id: str) -> Any:
    """The dataset's config as stored; ``{}`` when it holds none."""
    stored = reads.get_dataset_config(s, dataset_id)
    return stored if stored is not None else {}


def all_configs(s: Session, max_rows: int, max_bytes: int) -> dict[str, Any]:
    """``{dataset_id: config}`` of every dataset, if there are at most ``max_rows`` and
    their configs together hold at most ``max_bytes`` of text."""
    count = s.scalar(select(func.count()).select_from(DatasetConfig)) or 0
    if count > max_rows:
        raise too_many(f"there are {count} datasets", max_rows,
                       "read each config with public_get_config(dataset_id), the ids from "
                       "public_get_datasets (paginated)")
    size = s.scalar(select(func.sum(func.length(DatasetConfig.config)))) or 0
    if size > max_bytes:
        reason = (f"the {count} configs hold {size} bytes together, more than "
                  f"max_body_bytes ({max_bytes}); read each with public_get_config(dataset_id)")
        raise InvalidParams(reason, {"problems": [reason], "option": "max_body_bytes"})
    return {dataset_id: json.loads(text) for dataset_id, text in s.execute(
        select(DatasetConfig.dataset_id, DatasetConfig.config)
        .order_by(DatasetConfig.dataset_id))}


def description(s: Session, dataset_id: str) -> str:
    return _dataset(s, dataset_id).description or ""


def steering(s: Session, dataset_id: str) -> Any:
    """The config's ``steering`` section; ``{}`` when it has none (or null)."""
    stored = config(s, dataset_id)
    found = stored.get("steering") if isinstance(stored, dict) else None
    return found if found is not None else {}


def datasets_with_status(s: Session, status: str, max_rows: int) -> list[str]:
    if status not in DATASET_STATES:
        reason = f"status: must be one of {', '.join(DATASET_STATES)}, got {status!r}"
        raise InvalidParams(reason, {"problems": [reason]})
    ids = list(s.scalars(select(Dataset.dataset_id).where(Dataset.status == status)
                         .order_by(Dataset.dataset_num).limit(max_rows + 1)))
    if len(ids) > max_rows:
        raise too_many(f"more than {max_rows} datasets are {status}", max_rows,
                       "page through public_get_datasets(status, limit, after)")
    return ids


def all_completion(s: Session, max_rows: int) -> dict[str, float]:
    """``{dataset_id: fraction of its tasks complete}`` of every dataset, from the counters
    (tasks of jobs not made yet count, as in public_get_number_of_tasks_in_each_state)."""
    count = s.scalar(select(func.count()).select_from(Dataset)) or 0
    if count > max_rows:
        raise too_many(f"there are {count} datasets", max_rows,
                       "read each with public_get_dataset_completion(dataset_id)")
    sums: dict[str, tuple[int, int]] = {
        dataset_id: (int(total or 0), int(complete or 0))
        for dataset_id, total, complete in s.execute(
            select(TaskCount.dataset_id, func.sum(TaskCount.n),
                   func.sum(case((TaskCount.status == "complete", TaskCount.n), else_=0)))
            .group_by(TaskCount.dataset_id))}
    out: dict[str, float] = {}
    for d in s.scalars(select(Dataset).order_by(Dataset.dataset_num)):
        total, complete = sums.get(d.dataset_id, (0, 0))
        total += _unmade_tasks(d)
        out[d.dataset_id] = complete / total if total else 0.0
    return out


# --- tasks ------------------------------------------------------------------------------

def task_ids(s: Session, dataset_id: str, max_rows: int) -> list[str]:
    """Every task of the dataset made so far (jobs are made as the queue needs them)."""
    _dataset(s, dataset_id)
    count = int(s.scalar(select(func.sum(TaskCount.n))
                         .where(TaskCount.dataset_id == dataset_id)) or 0)
    if count > max_rows:
        raise too_many(f"dataset {dataset_id} has {count} tasks", max_rows,
                       "page through public_get_tasks(dataset_id, limit, after)")
    return list(s.scalars(select(Task.task_id).where(Task.dataset_id == dataset_id)
                          .order_by(Task.task_id)))


def _ids_of_definitions(s: Session, defs: list[tuple[str, int]], max_rows: int,
                        what: str, use: str) -> list[str]:
    """The tasks of these (dataset, task index) definitions, counted first."""
    count = 0
    for chunk in _chunks(defs):
        count += int(s.scalar(select(func.sum(TaskCount.n)).where(
            tuple_(TaskCount.dataset_id, TaskCount.task_index).in_(chunk))) or 0)
    if count > max_rows:
        raise too_many(f"{count} tasks {what}", max_rows, use)
    ids: list[str] = []
    for dataset_id, index in defs:
        # every status named: the (dataset, status, task index) index then holds exactly
        # these rows, whatever else the dataset has
        ids.extend(s.scalars(select(Task.task_id).where(
            Task.dataset_id == dataset_id, Task.status.in_(TASK_STATES),
            Task.task_index == index)))
    return sorted(ids)


def task_ids_by_name(s: Session, task_name: str, max_rows: int) -> list[str]:
    """The tasks named ``task_name``, in any dataset."""
    defs = [(d, i) for d, i in s.execute(
        select(TaskDef.dataset_id, TaskDef.task_index).where(TaskDef.name == task_name))]
    return _ids_of_definitions(
        s, defs, max_rows, f"are named {task_name!r}",
        "page through public_get_tasks(dataset_id, task_name=..., limit, after)")


def requirements_text(requirements: Any) -> str:
    """A task definition's requirements as the text that public_get_tasks_by_requirements
    searches: JSON with sorted keys, e.g. ``{"cpu": 1, "disk": 1.0, "gpu": 0, ...}``."""
    return json.dumps(requirements, sort_keys=True)


def task_ids_by_requirements(s: Session, text: str, max_rows: int) -> list[str]:
    """The tasks whose definition's requirements text contains ``text``."""
    defs = [(d, i) for d, i, req in s.execute(
        select(TaskDef.dataset_id, TaskDef.task_index, TaskDef.requirements))
        if text in requirements_text(req)]
    return _ids_of_definitions(
        s, defs, max_rows, f"have requirements containing {text!r}",
        "page through public_get_tasks(dataset_id, task_name=..., limit, after)")


def _task_exists(s: Session, task_id: str) -> None:
    if s.scalar(select(Task.task_id).where(Task.task_id == task_id)) is None:
        raise NotFound(f"no task {task_id}", {"task_id": task_id})


def task_walltime(s: Session, task_id: str) -> list[list[float]]:
    """``[[walltime]]``: seconds its latest successful attempt took (0.0 before one)."""
    _task_exists(s, task_id)
    used = s.scalar(select(TaskStat.time_used).where(
        TaskStat.task_id == task_id, TaskStat.error == false())
        .order_by(TaskStat.stat_id.desc()).limit(1))
    return [[float(used) if used is not None else 0.0]]


def task_stat_rows(s: Session, task_id: str, max_rows: int) -> list[list[str]]:
    """``[[stat JSON text], ...]``, one row per attempt that reported, oldest first: what
    the pilot sent, and for an error also ``error: true`` and its ``time``, as IceProd
    2.3.2 stored them."""
    _task_exists(s, task_id)
    rows = list(s.execute(select(TaskStat.stats, TaskStat.error, TaskStat.created)
                          .where(TaskStat.task_id == task_id)
                          .order_by(TaskStat.stat_id).limit(max_rows + 1)))
    if len(rows) > max_rows:
        raise too_many(f"task {task_id} has more than {max_rows} attempts", max_rows,
                       "read its latest attempts with public_get_task(task_id)")
    out = []
    for stats, error, created in rows:
        stat = dict(stats) if isinstance(stats, dict) else {"stats": stats}
        if error:
            stat.setdefault("error", True)
            stat.setdefault("time", iso(created))
        out.append([json.dumps(stat)])
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def cpu_gpu_usage(s: Session, dataset_id: str) -> list[float]:
    """``[cpu, gpu]``: the means of ``resources.cpu`` and ``resources.gpu`` in the stats of
    the dataset's latest :data:`USAGE_SAMPLE` successful attempts (0.0 without any)."""
    _dataset(s, dataset_id)
    sums = [0.0, 0.0]
    counts = [0, 0]
    for (stats,) in s.execute(select(TaskStat.stats).where(
            TaskStat.dataset_id == dataset_id, TaskStat.error == false())
            .order_by(TaskStat.created.desc()).limit(USAGE_SAMPLE)):
        used = stats.get("resources") if isinstance(stats, dict) else None
        if not isinstance(used, dict):
            continue
        for i, key in enumerate(("cpu", "gpu")):
            value = _number(used.get(key))
            if value is not None:
                sums[i] += value
                counts[i] += 1
    return [sums[i] / counts[i] if counts[i] else 0.0 for i in (0, 1)]
