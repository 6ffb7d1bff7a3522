"""Bulk task and job actions by humans: reset, resume and suspend many tasks at once.

Each action is a conditional, set-based UPDATE (``... WHERE status IN (allowed)``): one
statement for a filter (a dataset, a status, a task name), or one per batch of at most
:data:`BATCH` ids for an explicit list. A task moved out of ``processing`` loses its claim
and lease, so the pilot that held it gets -32004 on its next call about it. Ids are checked
(unknown: NotFound) and ownership is checked (not the owner and not an admin: Forbidden)
before anything changes; the audit entry is written in the same transaction.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import ColumnElement, exists, select, update
from sqlalchemy.orm import Session

from iceprod_server.db import audit
from iceprod_server.db.audit import Actor
from iceprod_server.db.models import Dataset, Job, Task, TaskDef
from iceprod_server.db.util import changed
from iceprod_server.errors import Forbidden, InvalidParams, NotFound
from iceprod_server.states import JOB_STATES, TASK_STATES

BATCH = 1000
# states a task leaves only by running or by a human action
LIVE = ("idle", "waiting", "queued", "processing", "reset", "resume")

RESET_TASKS_FROM = ("failed", "suspended", "processing", "queued", "waiting", "reset", "resume")
RESUME_TASKS_FROM = ("suspended", "failed")
RESET_JOBS_FROM = ("failed", "suspended", "processing", "queued", "waiting")


def chunks(ids: Sequence[str], size: int = BATCH) -> Iterator[list[str]]:
    for start in range(0, len(ids), size):
        yield list(ids[start:start + size])


def move_tasks(s: Session, conditions: Sequence[ColumnElement[bool]],
               from_states: Iterable[str], to_state: str, now: float,
               clear_failures: bool = False) -> int:
    """Move the tasks matching ``conditions`` that are in ``from_states`` to ``to_state``,
    dropping any claim and lease; returns how many moved."""
    values: dict[str, Any] = {"status": to_state, "status_changed": now, "claim": None,
                              "claimed_by": None, "lease_expires": None,
                              "retry_after": None}  # a human's reset runs at once
    if clear_failures:
        values["failures"] = 0
    return changed(s, update(Task).where(*conditions, Task.status.in_(tuple(from_states)))
                   .values(**values).execution_options(synchronize_session=False))


def move_jobs(s: Session, conditions: Sequence[ColumnElement[bool]],
              from_states: Iterable[str], to_state: str, now: float) -> int:
    return changed(s, update(Job).where(*conditions, Job.status.in_(tuple(from_states)))
                   .values(status=to_state, status_changed=now)
                   .execution_options(synchronize_session=False))


def reopen(s: Session, dataset_ids: Iterable[str], now: float) -> None:
    """After tasks went back to a live state: their jobs and datasets in errors, complete
    or suspended are processing again (the scheduler would derive the same; doing it here
    makes the change visible at once). A dataset's suspended state may be derived (every
    task suspended one by one), which only a human's act ends: this is one."""
    for batch in chunks(sorted(set(dataset_ids))):
        has_live_task = exists().where(Task.job_id == Job.job_id, Task.status.in_(LIVE))
        move_jobs(s, [Job.dataset_id.in_(batch), has_live_task], ("errors", "suspended"),
                  "processing", now)
        s.execute(update(Dataset)
                  .where(Dataset.dataset_id.in_(batch),
                         Dataset.status.in_(("errors", "complete", "suspended")))
                  .values(status="processing", status_changed=now)
                  .execution_options(synchronize_session=False))


def check_owner(s: Session, actor: Actor, dataset_ids: Iterable[str]) -> None:
    """Forbidden unless ``actor`` may change every one of these datasets."""
    if actor.is_admin:
        return
    for batch in chunks(sorted(set(dataset_ids))):
        for dataset_id, owner_id in s.execute(
                select(Dataset.dataset_id, Dataset.owner_id)
                .where(Dataset.dataset_id.in_(batch))):
            if not actor.may_change(owner_id):
                raise Forbidden(f"dataset {dataset_id} belongs to another user",
                                {"dataset_id": dataset_id})


def dataset_exists(s: Session, dataset_id: str) -> None:
    if s.scalar(select(Dataset.dataset_id).where(Dataset.dataset_id == dataset_id)) is None:
        raise NotFound(f"no dataset {dataset_id}", {"dataset_id": dataset_id})


def _unique(ids: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def _owned_ids(s: Session, actor: Actor, id_col: Any, ids: Sequence[str],
               dataset_id: str | None) -> tuple[list[str], set[str]]:
    """The ids once each and the datasets they belong to, after checking they exist
    (NotFound) and that ``actor`` may change those datasets (Forbidden); with
    ``dataset_id``, only that dataset's rows will move."""
    unique = _unique(ids)
    datasets = set(_existing(s, id_col, unique).values())
    if dataset_id is not None:
        datasets &= {dataset_id}
    check_owner(s, actor, datasets)
    return unique, datasets


def _existing(s: Session, id_col: Any, ids: list[str]) -> dict[str, str]:
    """id -> dataset_id for the rows of ``id_col``'s table; NotFound if any is missing."""
    table = id_col.class_
    found: dict[str, str] = {}
    for batch in chunks(ids):
        found.update((row[0], row[1]) for row in
                     s.execute(select(id_col, table.dataset_id).where(id_col.in_(batch))))
    missing = [i for i in ids if i not in found]
    if missing:
        kind = "tasks" if table is Task else "jobs"
        raise NotFound(f"no such {kind}: {', '.join(missing[:10])}"
                       + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""),
                       {"missing": missing[:100], "count": len(missing)})
    return found


def _task_action(s: Session, actor: Actor, method: str, from_states: Sequence[str],
                 to_state: str, task_ids: list[str] | None, dataset_id: str | None,
                 status: str | None, task_name: str | None) -> dict[str, Any]:
    if task_ids is None and dataset_id is None:
        raise InvalidParams("give task_ids, or at least dataset_id")
    if status is not None and status not in TASK_STATES:
        raise InvalidParams(f"status must be one of {', '.join(TASK_STATES)}, got {status!r}")
    filters: list[ColumnElement[bool]] = []
    if status is not None:
        filters.append(Task.status == status)
    if dataset_id is not None:
        dataset_exists(s, dataset_id)
        filters.append(Task.dataset_id == dataset_id)
        if task_name is not None:
            index = s.scalar(select(TaskDef.task_index).where(
                TaskDef.dataset_id == dataset_id, TaskDef.name == task_name))
            if index is None:
                raise NotFound(f"dataset {dataset_id} has no task {task_name!r}")
            filters.append(Task.task_index == index)
    elif task_name is not None:
        filters.append(Task.name == task_name)

    now = time.time()
    resets = to_state == "reset"
    count = 0
    if task_ids is not None:
        ids, datasets = _owned_ids(s, actor, Task.task_id, task_ids, dataset_id)
        for batch in chunks(ids):
            count += move_tasks(s, [Task.task_id.in_(batch), *filters], from_states,
                                to_state, now, clear_failures=resets)
        target = f"{len(ids)} tasks"
    else:
        assert dataset_id is not None
        datasets = {dataset_id}
        check_owner(s, actor, datasets)
        count = move_tasks(s, filters, from_states, to_state, now, clear_failures=resets)
        target = dataset_id
    if count and to_state != "suspended":
        reopen(s, datasets, now)
    audit.record(s, actor, method, target,
                 {"task_ids": task_ids, "dataset_id": dataset_id, "status": status,
                  "task_name": task_name}, count)
    return {"count": count}


def reset_tasks(s: Session, actor: Actor, task_ids: list[str] | None = None,
                dataset_id: str | None = None, status: str | None = None,
                task_name: str | None = None) -> dict[str, Any]:
    return _task_action(s, actor, "reset_tasks", RESET_TASKS_FROM, "reset", task_ids,
                        dataset_id, status, task_name)


def resume_tasks(s: Session, actor: Actor, task_ids: list[str] | None = None,
                 dataset_id: str | None = None, status: str | None = None,
                 task_name: str | None = None) -> dict[str, Any]:
    return _task_action(s, actor, "resume_tasks", RESUME_TASKS_FROM, "resume", task_ids,
                        dataset_id, status, task_name)


def suspend_tasks(s: Session, actor: Actor, task_ids: list[str] | None = None,
                  dataset_id: str | None = None, status: str | None = None,
                  task_name: str | None = None) -> dict[str, Any]:
    return _task_action(s, actor, "suspend_tasks", LIVE, "suspended", task_ids, dataset_id,
                        status, task_name)


def _job_action(s: Session, actor: Actor, method: str, task_from: Sequence[str],
                task_to: str, job_from: Sequence[str], job_to: str,
                job_ids: list[str] | None, dataset_id: str | None,
                status: str | None) -> dict[str, Any]:
    if job_ids is None and dataset_id is None:
        raise InvalidParams("give job_ids, or at least dataset_id")
    if status is not None and status not in JOB_STATES:
        raise InvalidParams(f"status must be one of {', '.join(JOB_STATES)}, got {status!r}")
    job_filters: list[ColumnElement[bool]] = []
    if status is not None:
        job_filters.append(Job.status == status)
    if dataset_id is not None:
        dataset_exists(s, dataset_id)
        job_filters.append(Job.dataset_id == dataset_id)

    now = time.time()
    resets = task_to == "reset"
    count = 0
    if job_ids is not None:
        ids, datasets = _owned_ids(s, actor, Job.job_id, job_ids, dataset_id)
        for batch in chunks(ids):
            # tasks first: a status filter on their jobs must see the jobs unchanged
            chosen: Any = batch
            if job_filters:
                chosen = select(Job.job_id).where(Job.job_id.in_(batch), *job_filters)
            count += move_tasks(s, [Task.job_id.in_(chosen)], task_from, task_to, now,
                                clear_failures=resets)
            move_jobs(s, [Job.job_id.in_(batch), *job_filters], job_from, job_to, now)
        target = f"{len(ids)} jobs"
    else:
        assert dataset_id is not None
        datasets = {dataset_id}
        check_owner(s, actor, datasets)
        task_filters: list[ColumnElement[bool]] = [Task.dataset_id == dataset_id]
        if status is not None:
            task_filters.append(Task.job_id.in_(select(Job.job_id).where(*job_filters)))
        count = move_tasks(s, task_filters, task_from, task_to, now, clear_failures=resets)
        move_jobs(s, job_filters, job_from, job_to, now)
        target = dataset_id
    if count and task_to != "suspended":
        reopen(s, datasets, now)
    audit.record(s, actor, method, target,
                 {"job_ids": job_ids, "dataset_id": dataset_id, "status": status}, count)
    return {"count": count}


def reset_jobs(s: Session, actor: Actor, job_ids: list[str] | None = None,
               dataset_id: str | None = None, status: str | None = None) -> dict[str, Any]:
    return _job_action(s, actor, "reset_jobs", RESET_JOBS_FROM, "reset",
                       ("errors", "suspended"), "processing", job_ids, dataset_id, status)


def hard_reset_jobs(s: Session, actor: Actor, job_ids: list[str] | None = None,
                    dataset_id: str | None = None,
                    status: str | None = None) -> dict[str, Any]:
    return _job_action(s, actor, "hard_reset_jobs", TASK_STATES, "reset", JOB_STATES,
                       "processing", job_ids, dataset_id, status)


def suspend_jobs(s: Session, actor: Actor, job_ids: list[str] | None = None,
                 dataset_id: str | None = None, status: str | None = None) -> dict[str, Any]:
    return _job_action(s, actor, "suspend_jobs", LIVE, "suspended", ("processing",),
                       "suspended", job_ids, dataset_id, status)
