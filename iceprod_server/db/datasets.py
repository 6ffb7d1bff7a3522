"""Datasets: submission, config edits and the dataset-wide actions of humans.

Submission writes the dataset, its config and its task definitions only; jobs and tasks are
materialised later, in batches, by the scheduler. Every function here checks its input and
the caller's rights before it changes anything, and writes its audit entry in the same
transaction.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from iceprod_server import dataset_config
from iceprod_server.db import audit
from iceprod_server.db.audit import Actor
from iceprod_server.db.bulk import LIVE, move_jobs, move_tasks
from iceprod_server.db.ids import new_id
from iceprod_server.db.models import (
    Dataset,
    DatasetConfig,
    Group,
    Job,
    Task,
    TaskDef,
    TaskDefDep,
)
from iceprod_server.db.scheduling import effective_priority
from iceprod_server.db.util import changed
from iceprod_server.errors import Conflict, Forbidden, InvalidParams, NotFound
from iceprod_server.requirements import os_column
from iceprod_server.states import TASK_STATES

MAX_NJOBS = 100_000_000
MAX_DESCRIPTION = 16_000
MAX_STAT_KEYS = 100
# tasks that have not started yet take a changed requirement from an edited config
NOT_STARTED = ("idle", "waiting", "queued", "reset", "resume", "suspended", "failed")


def checked_config(config: Any) -> dict[str, Any]:
    """``config`` if it is a valid dataset config, else InvalidParams listing the problems."""
    problems = dataset_config.validate(config)
    if problems:
        raise InvalidParams("invalid dataset config: " + problems[0]
                            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
                            {"problems": problems})
    checked: dict[str, Any] = config
    return checked


def _check_description(description: str) -> None:
    if len(description) > MAX_DESCRIPTION:
        raise InvalidParams(f"description is longer than {MAX_DESCRIPTION} characters")


def submit_dataset(s: Session, actor: Actor, config: Any, description: str = "",
                   njobs: int = 1, gridspec: str = "", stat_keys: list[str] | None = None,
                   debug: bool = False, priority: float = 0.0,
                   group: str = "", difplus: str | None = None) -> dict[str, Any]:
    """Store a new dataset in status processing; returns its id and number."""
    stat_keys = list(stat_keys or [])
    if isinstance(njobs, bool) or not 1 <= njobs <= MAX_NJOBS:
        raise InvalidParams(f"njobs must be an integer from 1 to {MAX_NJOBS}, got {njobs!r}")
    if not math.isfinite(priority) or priority < 0:
        raise InvalidParams(f"priority must be a number >= 0, got {priority!r}")
    if len(gridspec) > 255:
        raise InvalidParams("gridspec is longer than 255 characters")
    if len(stat_keys) > MAX_STAT_KEYS or any(not k or len(k) > 255 for k in stat_keys):
        raise InvalidParams(f"stat_keys: at most {MAX_STAT_KEYS} non-empty names")
    _check_description(description)
    config = checked_config(config)

    group_id = None
    if group:
        group_id = s.scalar(select(Group.group_id).where(Group.name == group))
        if group_id is None:
            raise InvalidParams(f"no group {group!r}", {"group": group})
    dataset_id = new_id()
    deps = _resolve_dependencies(s, dataset_id, config)
    now = time.time()
    dataset = Dataset(dataset_id=dataset_id, description=description, owner_id=actor.user_id,
                      group_id=group_id, status="processing", priority=float(priority),
                      debug=debug, njobs=njobs, ntasks=len(config["tasks"]),
                      jobs_materialized=0, gridspec=gridspec, stat_keys=stat_keys,
                      created=now, status_changed=now)
    _insert_numbered(s, dataset)
    s.add(DatasetConfig(dataset_id=dataset_id, config=json.dumps(config), updated=now,
                        difplus=difplus))
    _write_task_defs(s, dataset_id, config, deps)
    s.flush()
    audit.record(s, actor, "submit_dataset", dataset_id,
                 {"config": config, "njobs": njobs, "description": description,
                  "group": group, "priority": priority, "debug": debug}, 1)
    return {"dataset_id": dataset_id, "dataset_num": dataset.dataset_num}


def _insert_numbered(s: Session, dataset: Dataset, attempts: int = 20) -> None:
    """Give ``dataset`` the next dataset number. Submissions queue on the lock of the row
    with the highest number (MariaDB; SQLite serialises writers anyway); one that still
    read a number taken meanwhile fails on the unique index and tries the next."""
    for _ in range(attempts):
        highest = s.scalar(select(Dataset.dataset_num).order_by(Dataset.dataset_num.desc())
                           .limit(1).with_for_update())
        dataset.dataset_num = (highest or 0) + 1
        try:
            with s.begin_nested():
                s.add(dataset)
                s.flush()
            return
        except IntegrityError:
            if dataset in s:
                s.expunge(dataset)
    raise Conflict("could not allocate a dataset number; try again")


def _resolve_dependencies(s: Session, dataset_id: str,
                          config: dict[str, Any]) -> list[list[tuple[str, int]]]:
    """For each task, the (dataset id, task index) pairs it depends on. A dependency on
    another dataset names it by id, or by number."""
    resolved: list[list[tuple[str, int]]] = []
    problems: list[str] = []
    for i, deps in enumerate(dataset_config.task_dependencies(config)):
        pairs: list[tuple[str, int]] = []
        for dep in deps:
            if isinstance(dep, int):
                pairs.append((dataset_id, dep))
                continue
            other = s.scalar(select(Dataset.dataset_id).where(Dataset.dataset_id == dep.dataset))
            if other is None and dep.dataset.isdigit():
                other = s.scalar(select(Dataset.dataset_id)
                                 .where(Dataset.dataset_num == int(dep.dataset)))
            index = None if other is None else s.scalar(
                select(TaskDef.task_index).where(TaskDef.dataset_id == other,
                                                 TaskDef.name == dep.task))
            if other is None:
                problems.append(f"$.tasks[{i}].depends: no dataset {dep.dataset!r}")
            elif index is None:
                problems.append(f"$.tasks[{i}].depends: dataset {dep.dataset} has no task "
                                f"{dep.task!r}")
            else:
                pairs.append((other, index))
        resolved.append(pairs)
    if problems:
        raise InvalidParams("invalid dataset config: " + problems[0], {"problems": problems})
    return resolved


def _write_task_defs(s: Session, dataset_id: str, config: dict[str, Any],
                     deps: list[list[tuple[str, int]]]) -> None:
    for index, task in enumerate(config["tasks"]):
        s.add(TaskDef(dataset_id=dataset_id, task_index=index, name=task["name"],
                      requirements=dataset_config.task_requirements(
                          task, dataset_config.steering_parameters(config))))
        for dep_dataset, dep_index in deps[index]:
            s.add(TaskDefDep(dataset_id=dataset_id, task_index=index,
                             dep_dataset_id=dep_dataset, dep_task_index=dep_index))


def load_for_change(s: Session, actor: Actor, dataset_id: str) -> Dataset:
    """The dataset, locked for this transaction; NotFound or Forbidden otherwise."""
    dataset = s.scalar(select(Dataset).where(Dataset.dataset_id == dataset_id)
                       .with_for_update())
    if dataset is None:
        raise NotFound(f"no dataset {dataset_id}", {"dataset_id": dataset_id})
    if not actor.may_change(dataset.owner_id):
        raise Forbidden(f"dataset {dataset_id} belongs to another user",
                        {"dataset_id": dataset_id})
    return dataset


def _finish(s: Session, actor: Actor, method: str, dataset: Dataset, status: str,
            tasks: int, now: float, params: dict[str, Any] | None = None) -> dict[str, Any]:
    if dataset.status != status:
        dataset.status = status
        dataset.status_changed = now
    audit.record(s, actor, method, dataset.dataset_id, params or {}, tasks)
    return {"dataset_id": dataset.dataset_id, "status": status, "tasks": tasks}


def _reopened(status: str, moved: int) -> str:
    """The status after tasks went back to work: a truncated dataset stays truncated (it
    still makes no new jobs), a complete one where nothing moved stays complete."""
    if status == "truncated" or (status == "complete" and moved == 0):
        return status
    return "processing"


def suspend_dataset(s: Session, actor: Actor, dataset_id: str) -> dict[str, Any]:
    """Suspend every task that has not finished; a truncated dataset stays truncated."""
    dataset = load_for_change(s, actor, dataset_id)
    if dataset.status == "complete":
        raise Conflict(f"dataset {dataset_id} is complete", {"status": dataset.status})
    now = time.time()
    moved = move_tasks(s, [Task.dataset_id == dataset_id], LIVE, "suspended", now)
    move_jobs(s, [Job.dataset_id == dataset_id], ("processing",), "suspended", now)
    status = "truncated" if dataset.status == "truncated" else "suspended"
    return _finish(s, actor, "suspend_dataset", dataset, status, moved, now)


def resume_dataset(s: Session, actor: Actor, dataset_id: str) -> dict[str, Any]:
    """Suspended tasks go back to work (status resume, then idle by the scheduler)."""
    dataset = load_for_change(s, actor, dataset_id)
    now = time.time()
    moved = move_tasks(s, [Task.dataset_id == dataset_id], ("suspended",), "resume", now)
    move_jobs(s, [Job.dataset_id == dataset_id], ("suspended",), "processing", now)
    return _finish(s, actor, "resume_dataset", dataset, _reopened(dataset.status, moved),
                   moved, now)


def reset_dataset(s: Session, actor: Actor, dataset_id: str) -> dict[str, Any]:
    """Failed and suspended tasks go back to idle with their failure count cleared."""
    dataset = load_for_change(s, actor, dataset_id)
    now = time.time()
    moved = move_tasks(s, [Task.dataset_id == dataset_id], ("failed", "suspended"), "idle",
                       now, clear_failures=True)
    move_jobs(s, [Job.dataset_id == dataset_id], ("errors", "suspended"), "processing", now)
    return _finish(s, actor, "reset_dataset", dataset, _reopened(dataset.status, moved),
                   moved, now)


def hard_reset_dataset(s: Session, actor: Actor, dataset_id: str) -> dict[str, Any]:
    """Every task, complete ones included, goes back to idle with failures cleared."""
    dataset = load_for_change(s, actor, dataset_id)
    now = time.time()
    moved = move_tasks(s, [Task.dataset_id == dataset_id], TASK_STATES, "idle", now,
                       clear_failures=True)
    move_jobs(s, [Job.dataset_id == dataset_id], ("suspended", "errors", "complete"),
              "processing", now)
    status = "truncated" if dataset.status == "truncated" else "processing"
    return _finish(s, actor, "hard_reset_dataset", dataset, status, moved, now)


def truncate_dataset(s: Session, actor: Actor, dataset_id: str) -> dict[str, Any]:
    """Make no new jobs; the jobs that exist run to their end.

    ``njobs`` becomes the number of jobs made so far, so the dataset stays truncated even
    when its status is later derived from its tasks (complete, errors, suspended) or reset.
    """
    dataset = load_for_change(s, actor, dataset_id)
    if dataset.status == "complete":
        raise Conflict(f"dataset {dataset_id} is complete", {"status": dataset.status})
    old_njobs = dataset.njobs
    dataset.njobs = min(dataset.njobs, dataset.jobs_materialized)
    return _finish(s, actor, "truncate_dataset", dataset, "truncated", 0, time.time(),
                   {"njobs_before": old_njobs, "njobs": dataset.njobs})


def set_dataset_priority(s: Session, actor: Actor, dataset_id: str,
                         priority: float) -> dict[str, Any]:
    dataset = load_for_change(s, actor, dataset_id)
    if not math.isfinite(priority) or priority < 0:
        raise InvalidParams(f"priority must be a number >= 0, got {priority!r}")
    dataset.priority = float(priority)
    # tasks already queued take the new rank too, not only those queued from now on
    requeued = changed(s, update(Task).where(Task.dataset_id == dataset_id,
                                             Task.status == "queued")
                       .values(queue_rank=-effective_priority(s, dataset)))
    result = _finish(s, actor, "set_dataset_priority", dataset, dataset.status, requeued,
                     time.time(), {"priority": priority})
    result["priority"] = dataset.priority
    return result


def update_dataset_config(s: Session, actor: Actor, dataset_id: str, config: Any,
                          description: str | None = None) -> dict[str, Any]:
    """Replace a dataset's config. Once jobs exist the tasks (their number and names) must
    stay the same; changed requirements apply to new jobs and to tasks not yet started."""
    dataset = load_for_change(s, actor, dataset_id)
    config = checked_config(config)
    if description is not None:
        _check_description(description)
    old_defs = list(s.scalars(select(TaskDef).where(TaskDef.dataset_id == dataset_id)
                              .order_by(TaskDef.task_index)))
    old_names = [d.name for d in old_defs]
    new_names = [t["name"] for t in config["tasks"]]
    now = time.time()
    if old_names != new_names:
        _check_tasks_may_change(s, dataset, old_names)
    deps = _resolve_dependencies(s, dataset_id, config)

    changed_tasks = 0
    if old_names == new_names:
        for task_def, task in zip(old_defs, config["tasks"], strict=True):
            req = dataset_config.task_requirements(
                task, dataset_config.steering_parameters(config))
            if req != task_def.requirements:
                task_def.requirements = req
                changed_tasks += _apply_requirements(s, dataset_id, task_def.task_index, req)
        s.execute(delete(TaskDefDep).where(TaskDefDep.dataset_id == dataset_id))
        s.flush()
        for index, pairs in enumerate(deps):
            for dep_dataset, dep_index in pairs:
                s.add(TaskDefDep(dataset_id=dataset_id, task_index=index,
                                 dep_dataset_id=dep_dataset, dep_task_index=dep_index))
    else:
        s.execute(delete(TaskDefDep).where(TaskDefDep.dataset_id == dataset_id))
        s.execute(delete(TaskDef).where(TaskDef.dataset_id == dataset_id))
        s.flush()
        _write_task_defs(s, dataset_id, config, deps)
        dataset.ntasks = len(new_names)
    s.execute(update(DatasetConfig).where(DatasetConfig.dataset_id == dataset_id)
              .values(config=json.dumps(config), updated=now)
              .execution_options(synchronize_session=False))
    if description is not None:
        dataset.description = description
    s.flush()
    return _finish(s, actor, "update_dataset_config", dataset, dataset.status, changed_tasks,
                   now, {"config": config, "description": description})


def _check_tasks_may_change(s: Session, dataset: Dataset, old_names: list[str]) -> None:
    has_jobs = dataset.jobs_materialized > 0 or s.scalar(
        select(Job.job_id).where(Job.dataset_id == dataset.dataset_id).limit(1)) is not None
    if has_jobs:
        raise Conflict("the number and names of tasks cannot change once jobs exist",
                       {"tasks": old_names})
    dependent = s.scalar(select(TaskDefDep.dataset_id).where(
        TaskDefDep.dep_dataset_id == dataset.dataset_id,
        TaskDefDep.dataset_id != dataset.dataset_id).limit(1))
    if dependent is not None:
        raise Conflict(f"dataset {dependent} depends on the tasks of this dataset; their "
                       "number and names cannot change", {"tasks": old_names})


def _apply_requirements(s: Session, dataset_id: str, task_index: int,
                        req: dict[str, Any]) -> int:
    return changed(s, update(Task)
                   .where(Task.dataset_id == dataset_id, Task.status.in_(NOT_STARTED),
                          Task.task_index == task_index)
                   .values(req_cpu=req["cpu"], req_gpu=req["gpu"], req_memory=req["memory"],
                           req_disk=req["disk"], req_time=req["time"], req_os=os_column(req["os"]))
                   .execution_options(synchronize_session=False))
