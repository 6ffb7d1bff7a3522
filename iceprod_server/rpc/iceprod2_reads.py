"""IceProd 2.3.2's ``public_*`` reads that this server had under no such name, in 2.3.2's
shapes. Reads that 2.3.2 answered whole are bounded by ``unpaged_max_rows``
(:mod:`iceprod_server.db.iceprod2_reads`); an id that names nothing is -32003, where 2.3.2
answered an empty value.
"""

from __future__ import annotations

from typing import Any

from iceprod_server.db import graphs
from iceprod_server.db import iceprod2_reads as r
from iceprod_server.rpc.context import Context
from iceprod_server.rpc.human import READ_ERRORS
from iceprod_server.rpc.iceprod2 import iceprod2
from iceprod_server.rpc.registry import PUBLIC, Id, rpc_method


@iceprod2("public_get_dataset_config")
@rpc_method(PUBLIC, errors=READ_ERRORS)
async def public_get_config(ctx: Context, dataset_id: Id) -> Any:
    """The dataset's config as stored (``{}`` if it holds none)."""
    return await ctx.services.db.read(r.config, dataset_id)


@iceprod2("public_get_dataset_config of every dataset")
@rpc_method(PUBLIC, errors=READ_ERRORS)
async def public_get_all_config(ctx: Context) -> dict[str, Any]:
    """``{dataset_id: config}`` of every dataset: at most ``unpaged_max_rows`` datasets
    whose configs together fit in ``max_body_bytes`` (else -32602 naming the option)."""
    c = ctx.services.config
    return await ctx.services.db.read(r.all_configs, c.unpaged_max_rows, c.max_body_bytes)


@iceprod2("public_get_dataset")
@rpc_method(PUBLIC, errors=READ_ERRORS)
async def public_get_dataset_description(ctx: Context, dataset_id: Id) -> str:
    """The dataset's description (a string, ``""`` for none)."""
    return await ctx.services.db.read(r.description, dataset_id)


@iceprod2("public_get_dataset_config")
@rpc_method(PUBLIC, errors=READ_ERRORS)
async def public_get_dataset_steering(ctx: Context, dataset_id: Id) -> Any:
    """The ``steering`` section of the dataset's config (``{}`` for none)."""
    return await ctx.services.db.read(r.steering, dataset_id)


@iceprod2("public_get_tasks")
@rpc_method(PUBLIC, errors=READ_ERRORS)
async def public_get_task_ids(ctx: Context, dataset_id: Id) -> list[Id]:
    """The ids of the dataset's tasks made so far, oldest first: at most
    ``unpaged_max_rows`` (more: -32602, counted before any row is read)."""
    return await ctx.services.db.read(r.task_ids, dataset_id,
                                      ctx.services.config.unpaged_max_rows)


@iceprod2("public_get_tasks(task_name)")
@rpc_method(PUBLIC, errors=READ_ERRORS)
async def public_get_tasks_by_name(ctx: Context, task_name: str) -> list[Id]:
    """The ids of the tasks of that name in every dataset: at most ``unpaged_max_rows``."""
    return await ctx.services.db.read(r.task_ids_by_name, task_name,
                                      ctx.services.config.unpaged_max_rows)


@iceprod2("public_get_tasks")
@rpc_method(PUBLIC, errors=READ_ERRORS)
async def public_get_tasks_by_requirements(ctx: Context, task_reqirements: str) -> list[Id]:
    """The ids of the tasks whose task definition's requirements, as JSON text with sorted
    keys (``{"cpu": 1, "disk": 1.0, "gpu": 0, "memory": 1.0, "os": null, "time": 1.0}``),
    contain ``task_reqirements`` (IceProd 2.3.2's spelling): at most
    ``unpaged_max_rows``."""
    return await ctx.services.db.read(r.task_ids_by_requirements, task_reqirements,
                                      ctx.services.config.unpaged_max_rows)


@iceprod2("public_get_task (attempts)")
@rpc_method(PUBLIC, errors=READ_ERRORS)
async def public_get_task_walltime(ctx: Context, task_id: Id) -> list[list[float]]:
    """``[[walltime]]``: the seconds the task's latest successful attempt took (0.0
    before one)."""
    return await ctx.services.db.read(r.task_walltime, task_id)


@iceprod2("public_get_task_stats")
@rpc_method(PUBLIC, errors=READ_ERRORS)
async def public_get_cpu_gpu_usage(ctx: Context, dataset_id: Id) -> list[float]:
    """``[cpu, gpu]``: the means of ``resources.cpu`` and ``resources.gpu`` in the stats
    of the dataset's latest 10,000 successful attempts (``[0.0, 0.0]`` without any)."""
    return await ctx.services.db.read(r.cpu_gpu_usage, dataset_id)


@iceprod2("public_get_dataset_completion of every dataset")
@rpc_method(PUBLIC, errors=READ_ERRORS)
async def public_get_all_dataset_completion(ctx: Context) -> dict[str, float]:
    """``{dataset_id: fraction of its tasks complete}`` of every dataset (at most
    ``unpaged_max_rows``)."""
    return await ctx.services.db.read(r.all_completion, ctx.services.config.unpaged_max_rows)


@iceprod2("public_get_throughput")
@rpc_method(PUBLIC, errors=READ_ERRORS)
async def public_get_graphs(ctx: Context, start: float) -> list[dict[str, Any]]:
    """The points of the last ``start`` minutes, oldest first: ``[{name, value,
    timestamp}]`` with ``active_tasks`` (``{status: count}`` of the statuses other than
    idle, waiting and complete) and ``completed_tasks`` (``{"completions": N}`` in the
    interval) at the end of every ``graph_interval`` seconds; timestamps ISO text in UTC.
    A week of intervals is kept."""
    return await ctx.services.db.read(graphs.points, start,
                                      ctx.services.config.graph_interval)


@iceprod2("whoami, site_id option")
@rpc_method(PUBLIC, errors=READ_ERRORS)
async def public_get_site_id(ctx: Context) -> str:
    """This server's site id: the ``site_id`` option (``[site] id``), ``""`` when unset."""
    return ctx.services.config.site_id
