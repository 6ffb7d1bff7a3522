"""Methods for people (the web pages and the command line): submitting datasets, acting on
datasets, jobs and tasks, and the ``public_*`` reads.

Actions are open to users, on the datasets they own, and to admins, on any dataset. Reads
are public while ``public_read`` is on. The work itself is in :mod:`iceprod_server.db`.
"""

from __future__ import annotations

import json
from typing import Any

from iceprod_server import dataset_config
from iceprod_server.db import bulk, datasets, iceprod2_reads, reads, request_keys
from iceprod_server.db.audit import Actor
from iceprod_server.errors import (
    CONFLICT,
    FORBIDDEN,
    INVALID_PARAMS,
    NOT_AUTHENTICATED,
    NOT_FOUND,
    OUTCOME_UNKNOWN,
    UNAVAILABLE,
    InvalidParams,
)
from iceprod_server.rpc.context import Context
from iceprod_server.rpc.registry import ADMIN, PUBLIC, USER, Id, rpc_method

ACTION_ERRORS = (INVALID_PARAMS, NOT_AUTHENTICATED, FORBIDDEN, NOT_FOUND, CONFLICT,
                 UNAVAILABLE, OUTCOME_UNKNOWN)
READ_ERRORS = (INVALID_PARAMS, NOT_AUTHENTICATED, NOT_FOUND, UNAVAILABLE)


def actor(ctx: Context) -> Actor:
    caller = ctx.caller
    return Actor(caller.actor, caller.user_id, caller.is_admin)


def _config(config: dict[str, Any] | str) -> Any:
    try:
        return dataset_config.parse(config)
    except ValueError as e:
        raise InvalidParams(str(e), {"problems": [f"$: {e}"]}) from e


def _difplus(difplus: str | dict[str, Any] | None) -> str | None:
    """IceProd 2's DIF-plus record, kept as text (an object as its JSON); none: null."""
    if isinstance(difplus, dict):
        return json.dumps(difplus)
    return difplus or None


# --- datasets -------------------------------------------------------------------------

@rpc_method(USER, ADMIN, errors=(INVALID_PARAMS, NOT_AUTHENTICATED, FORBIDDEN, UNAVAILABLE,
                                  OUTCOME_UNKNOWN))
async def submit_dataset(ctx: Context, config: dict[str, Any] | str, description: str = "",
                         njobs: int = 1, gridspec: str = "", stat_keys: list[str] | None = None,
                         debug: bool = False, priority: float = 0.0, group: str = "",
                         difplus: str | dict[str, Any] | None = None,
                         request_key: str | None = None) -> Id:
    """Submit a dataset; returns its dataset_id.

    ``config`` is an IceProd dataset config (version 3), as an object or as JSON text; it is
    checked against the dataset config schema and an invalid one is refused with -32602,
    whose ``data.problems`` lists each problem with its JSON path. ``njobs`` (1 to
    100,000,000) jobs each run every task of the config; they are created as the queue needs
    them. ``group`` names an existing group (its priority share applies); ``stat_keys`` are
    the statistics kept from each finished task; a ``debug`` dataset suspends a task at its
    first error instead of retrying it. ``difplus``, IceProd 2's DIF-plus record (text or
    an object), is kept with the config and shown on the dataset page. The caller owns the
    dataset. A repeat with the same ``request_key`` (after -32006, or a lost answer)
    returns the first call's dataset_id and submits nothing.
    """
    key = request_keys.check(request_key)
    parsed = _config(config)
    stat_keys = stat_keys or []
    kept_difplus = _difplus(difplus)
    params = {"config": parsed, "description": description, "njobs": njobs,
              "gridspec": gridspec, "stat_keys": stat_keys, "debug": debug,
              "priority": priority, "group": group, "difplus": kept_difplus}
    result = await ctx.services.db.write(
        request_keys.once, ctx.caller.actor, key, "submit_dataset", params,
        datasets.submit_dataset, actor(ctx), parsed, description, njobs, gridspec,
        stat_keys, debug, priority, group, kept_difplus)
    ctx.services.wake_scheduler()
    dataset_id: str = result["dataset_id"]
    return dataset_id


@rpc_method(USER, ADMIN, errors=ACTION_ERRORS)
async def update_dataset_config(ctx: Context, dataset_id: Id, config: dict[str, Any] | str,
                                description: str | None = None) -> dict[str, Any] | None:
    """Replace a dataset's config (and its description, unless null).

    The new config is validated like a submission. Once jobs exist the number and names of
    tasks may not change (-32004). Changed requirements apply to jobs made from now on and
    to tasks that have not started; ``tasks`` in the result counts those tasks. Called the
    IceProd 2 way (``passkey`` or ``args`` among the params) it answers null, as 2.3.2 did.
    """
    result: dict[str, Any] = await ctx.services.db.write(
        datasets.update_dataset_config, actor(ctx), dataset_id, _config(config), description)
    return None if ctx.iceprod2 else result


@rpc_method(USER, ADMIN, errors=ACTION_ERRORS)
async def set_dataset_priority(ctx: Context, dataset_id: Id, priority: float) -> dict[str, Any]:
    """Set a dataset's priority (a number >= 0; higher runs first within its group)."""
    return await ctx.services.db.write(datasets.set_dataset_priority, actor(ctx), dataset_id,
                                       priority)


@rpc_method(USER, ADMIN, errors=ACTION_ERRORS)
async def suspend_dataset(ctx: Context, dataset_id: Id) -> dict[str, Any]:
    """Suspend a dataset: every task not yet finished becomes suspended, and running ones
    lose their claim (their pilots' later calls are refused). Returns
    ``{dataset_id, status, tasks}`` with the number of tasks suspended."""
    return await ctx.services.db.write(datasets.suspend_dataset, actor(ctx), dataset_id)


@rpc_method(USER, ADMIN, errors=ACTION_ERRORS)
async def resume_dataset(ctx: Context, dataset_id: Id) -> dict[str, Any]:
    """Resume a dataset: its suspended tasks go back to the queue; failed ones stay failed
    (use reset_dataset). Returns ``{dataset_id, status, tasks}``."""
    result = await ctx.services.db.write(datasets.resume_dataset, actor(ctx), dataset_id)
    ctx.services.wake_scheduler()
    return result


@rpc_method(USER, ADMIN, errors=ACTION_ERRORS)
async def reset_dataset(ctx: Context, dataset_id: Id) -> dict[str, Any]:
    """Reset a dataset: failed and suspended tasks go back to idle with their failure count
    cleared; complete and running tasks are untouched. Returns ``{dataset_id, status,
    tasks}``."""
    result = await ctx.services.db.write(datasets.reset_dataset, actor(ctx), dataset_id)
    ctx.services.wake_scheduler()
    return result


@rpc_method(USER, ADMIN, errors=ACTION_ERRORS)
async def hard_reset_dataset(ctx: Context, dataset_id: Id) -> dict[str, Any]:
    """Run a dataset again from the start: every task, complete and running ones included,
    goes back to idle with its failure count cleared. Returns ``{dataset_id, status,
    tasks}``."""
    result = await ctx.services.db.write(datasets.hard_reset_dataset, actor(ctx), dataset_id)
    ctx.services.wake_scheduler()
    return result


@rpc_method(USER, ADMIN, errors=ACTION_ERRORS)
async def truncate_dataset(ctx: Context, dataset_id: Id) -> dict[str, Any]:
    """Truncate a dataset: no new jobs are made; the jobs that exist run to their end.
    Suspending, resuming and resetting a truncated dataset act on its tasks and leave it
    truncated."""
    return await ctx.services.db.write(datasets.truncate_dataset, actor(ctx), dataset_id)


# --- tasks and jobs in bulk -------------------------------------------------------------

@rpc_method(USER, ADMIN, errors=ACTION_ERRORS)
async def reset_tasks(ctx: Context, task_ids: list[Id] | None = None,
                      dataset_id: Id | None = None, status: str | None = None,
                      task_name: str | None = None) -> dict[str, int]:
    """Reset tasks (failed, suspended, processing, queued, waiting, reset, resume) so they
    run again, failure counts cleared. Choose them by ``task_ids``, or by ``dataset_id``
    with optional ``status`` and ``task_name`` filters (both given: the intersection).
    Returns ``{count}``, the number of tasks changed."""
    result = await ctx.services.db.write(bulk.reset_tasks, actor(ctx), task_ids, dataset_id,
                                         status, task_name)
    ctx.services.wake_scheduler()
    return result


@rpc_method(USER, ADMIN, errors=ACTION_ERRORS)
async def resume_tasks(ctx: Context, task_ids: list[Id] | None = None,
                       dataset_id: Id | None = None, status: str | None = None,
                       task_name: str | None = None) -> dict[str, int]:
    """Resume suspended and failed tasks, chosen as for reset_tasks. Returns ``{count}``."""
    result = await ctx.services.db.write(bulk.resume_tasks, actor(ctx), task_ids, dataset_id,
                                         status, task_name)
    ctx.services.wake_scheduler()
    return result


@rpc_method(USER, ADMIN, errors=ACTION_ERRORS)
async def suspend_tasks(ctx: Context, task_ids: list[Id] | None = None,
                        dataset_id: Id | None = None, status: str | None = None,
                        task_name: str | None = None) -> dict[str, int]:
    """Suspend tasks that have not finished, chosen as for reset_tasks; running ones lose
    their claim. Returns ``{count}``."""
    return await ctx.services.db.write(bulk.suspend_tasks, actor(ctx), task_ids, dataset_id,
                                       status, task_name)


@rpc_method(USER, ADMIN, errors=ACTION_ERRORS)
async def reset_jobs(ctx: Context, job_ids: list[Id] | None = None,
                     dataset_id: Id | None = None, status: str | None = None) -> dict[str, int]:
    """Reset the unfinished, failed and suspended tasks of jobs, chosen by ``job_ids`` or by
    ``dataset_id`` with an optional job ``status``. Returns ``{count}`` of tasks changed."""
    result = await ctx.services.db.write(bulk.reset_jobs, actor(ctx), job_ids, dataset_id,
                                         status)
    ctx.services.wake_scheduler()
    return result


@rpc_method(USER, ADMIN, errors=ACTION_ERRORS)
async def hard_reset_jobs(ctx: Context, job_ids: list[Id] | None = None,
                          dataset_id: Id | None = None,
                          status: str | None = None) -> dict[str, int]:
    """Reset every task of jobs, complete ones included, chosen as for reset_jobs.
    Returns ``{count}``."""
    result = await ctx.services.db.write(bulk.hard_reset_jobs, actor(ctx), job_ids,
                                         dataset_id, status)
    ctx.services.wake_scheduler()
    return result


@rpc_method(USER, ADMIN, errors=ACTION_ERRORS)
async def suspend_jobs(ctx: Context, job_ids: list[Id] | None = None,
                       dataset_id: Id | None = None,
                       status: str | None = None) -> dict[str, int]:
    """Suspend the unfinished tasks of jobs, chosen as for reset_jobs. Returns
    ``{count}``."""
    return await ctx.services.db.write(bulk.suspend_jobs, actor(ctx), job_ids, dataset_id,
                                       status)


# --- reads ------------------------------------------------------------------------------

@rpc_method(PUBLIC, errors=READ_ERRORS)
async def public_get_datasets_by_status(ctx: Context, status: str | None = None
                                        ) -> dict[str, list[Id]] | list[Id]:
    """Dataset ids grouped by dataset status: ``{status: [dataset_id, ...]}``. With
    ``status`` (IceProd 2.3.2's form): the ids of that status, ``[dataset_id, ...]``, at
    most ``unpaged_max_rows``."""
    if status is not None:
        return await ctx.services.db.read(iceprod2_reads.datasets_with_status, status,
                                          ctx.services.config.unpaged_max_rows)
    return await ctx.services.db.read(reads.datasets_by_status)


@rpc_method(PUBLIC, errors=READ_ERRORS)
async def public_get_number_of_tasks_in_each_state(ctx: Context,
                                                   dataset_id: Id) -> dict[str, int]:
    """How many tasks of a dataset are in each status (zero counts left out). Tasks of
    jobs not made yet count as idle, unless the dataset is truncated."""
    return await ctx.services.db.read(reads.task_counts, dataset_id)


@rpc_method(PUBLIC, errors=READ_ERRORS)
async def public_get_number_of_tasks_by_name(ctx: Context,
                                             dataset_id: Id) -> dict[str, dict[str, int]]:
    """Task counts per task name and status: ``{task_name: {status: count}}``."""
    return await ctx.services.db.read(reads.task_counts_by_name, dataset_id)


@rpc_method(PUBLIC, errors=READ_ERRORS)
async def public_get_dataset(ctx: Context, dataset_id: Id) -> dict[str, Any]:
    """One dataset: number, description, owner, group, status, priority, njobs, ntasks,
    jobs made so far, gridspec, stat_keys, times, and its task names."""
    return await ctx.services.db.read(reads.get_dataset, dataset_id)


@rpc_method(PUBLIC, errors=READ_ERRORS)
async def public_get_dataset_config(ctx: Context, dataset_id: Id) -> dict[str, Any]:
    """A dataset's config, as stored."""
    return await ctx.services.db.read(reads.get_dataset_config, dataset_id)


@rpc_method(PUBLIC, errors=READ_ERRORS)
async def public_get_datasets(ctx: Context, status: str | None = None,
                              owner: str | None = None, limit: int = 100,
                              after: Id | None = None) -> dict[str, Any]:
    """Datasets, optionally of one status or owner (username), by id: ``{items, next}``;
    pass ``next`` as ``after`` for the following page (null: no more). ``limit`` <= 1000."""
    return await ctx.services.db.read(reads.list_datasets, status, owner, limit, after)


@rpc_method(PUBLIC, errors=READ_ERRORS)
async def public_get_jobs(ctx: Context, dataset_id: Id, status: str | None = None,
                          limit: int = 100, after: Id | None = None) -> dict[str, Any]:
    """Jobs of a dataset, optionally of one status, paginated like public_get_datasets."""
    return await ctx.services.db.read(reads.list_jobs, dataset_id, status, limit, after)


@rpc_method(PUBLIC, errors=READ_ERRORS)
async def public_get_job(ctx: Context, job_id: Id) -> dict[str, Any]:
    """One job and its tasks."""
    return await ctx.services.db.read(reads.get_job, job_id)


@rpc_method(PUBLIC, errors=READ_ERRORS)
async def public_get_tasks(ctx: Context, dataset_id: Id | None = None,
                           status: str | None = None, task_name: str | None = None,
                           job_index: int | None = None, limit: int = 100,
                           after: Id | None = None) -> dict[str, Any]:
    """Tasks, filtered by dataset, status, task name and job index, paginated like
    public_get_datasets."""
    return await ctx.services.db.read(reads.list_tasks, dataset_id, status, task_name,
                                      job_index, limit, after)


@rpc_method(PUBLIC, errors=READ_ERRORS)
async def public_get_task(ctx: Context, task_id: Id) -> dict[str, Any]:
    """One task with its attempts (host, time used, error, stats of each) and, for each log
    name, the last 40 lines of its newest log."""
    task = await ctx.services.db.read(reads.get_task, task_id)
    data_dir = ctx.services.config.path()
    for log in task["logs"]:
        path = log.pop("path", None)
        if "tail" not in log:
            # big logs live in files: read their end on the fs pool, not on the loop
            log["tail"] = await ctx.services.run_fs(reads.tail_file, data_dir, path) \
                if path else None
    return task


@rpc_method(PUBLIC, errors=READ_ERRORS)
async def public_get_task_stats(ctx: Context, dataset_id: Id | None = None,
                                task_id: Id | None = None
                                ) -> dict[str, dict[str, Any]] | list[list[str]]:
    """Per task name: ``count``, the tasks complete; over the dataset's most recent
    attempts of all task names together (2000 per task name in the dataset): ``failed``
    attempts, and ``mean``, ``min``, ``max``, ``p50``, ``p90`` of the successful ones'
    time_used (seconds), ``sample`` of them. With ``task_id`` instead (IceProd 2.3.2's
    form): that task's stats, one ``[JSON text]`` row per attempt that reported."""
    if (dataset_id is None) == (task_id is None):
        problem = "give dataset_id (stats per task name) or task_id (one task's stat rows)"
        raise InvalidParams(problem, {"problems": [problem]})
    if task_id is not None:
        return await ctx.services.db.read(iceprod2_reads.task_stat_rows, task_id,
                                          ctx.services.config.unpaged_max_rows)
    return await ctx.services.db.read(reads.task_stats, dataset_id)


@rpc_method(PUBLIC, errors=READ_ERRORS)
async def public_get_dataset_completion(ctx: Context, dataset_id: Id) -> dict[str, Any] | float:
    """``{total, complete, fraction, by_status}`` for a dataset's tasks; called the IceProd
    2 way (``passkey`` or ``args`` among the params), the fraction alone, as 2.3.2 did."""
    done: dict[str, Any] = await ctx.services.db.read(reads.dataset_completion, dataset_id)
    return float(done["fraction"]) if ctx.iceprod2 else done


@rpc_method(PUBLIC, errors=READ_ERRORS)
async def public_get_throughput(ctx: Context, dataset_id: Id | None = None,
                                hours: int = 24) -> dict[str, Any]:
    """Attempts finished (``complete``) and failed in each of the last ``hours`` hours
    (1 to 744), for one dataset or all: ``{hours, dataset_id, buckets: [{start, complete,
    failed}]}``, oldest first; the last bucket is the current hour."""
    return await ctx.services.db.read(reads.throughput, dataset_id, hours)
