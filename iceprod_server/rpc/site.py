"""Site-to-site methods: what a client site calls at its master, and ``site_status`` for
admins.

A client authenticates with its site key (``Authorization: Bearer``, or the legacy
``passkey`` and ``site_id`` params) or with a client certificate whose DN nginx passes from
the trusted proxy. Every call counts as contact and extends the leases of the tasks the
site holds; a site that stays silent longer than ``site_lease_seconds`` loses them to the
scheduler's lease expiry, like a silent pilot.
"""

from __future__ import annotations

import time
from typing import Any

from iceprod_server.db import sync_apply, sync_master
from iceprod_server.errors import (
    FORBIDDEN,
    INVALID_PARAMS,
    NOT_AUTHENTICATED,
    UNAVAILABLE,
    Forbidden,
)
from iceprod_server.federation.hlc import HybridClock, wall_clock
from iceprod_server.rpc import site_logs
from iceprod_server.rpc.context import Context
from iceprod_server.rpc.registry import ADMIN, SITE, rpc_method

ERRORS = (INVALID_PARAMS, NOT_AUTHENTICATED, FORBIDDEN, UNAVAILABLE)

_clocks: dict[str, HybridClock] = {}


def master_clock(ctx: Context) -> HybridClock:
    """This process's clock; its site id is ``site_id`` from the config, or ``master``."""
    config = ctx.services.config
    name = config.site_id or "master"
    clock = _clocks.get(name)
    if clock is None:
        clock = _clocks[name] = HybridClock(name, wall_clock(config.debug_clock_offset))
    return clock


def _site_id(ctx: Context) -> str:
    if ctx.caller.role != SITE or not ctx.caller.site_id:
        raise Forbidden("only a site may call this")
    return ctx.caller.site_id


@rpc_method(SITE, errors=ERRORS)
async def queue_master(ctx: Context, resources: dict[str, Any] | None = None,
                       num: int = 10) -> dict[str, Any]:
    """Hand up to ``num`` queued tasks (at most 1000) to the calling site, best first, each
    needing at most what ``resources`` offers (``cpu``, ``gpu``, ``memory``, ``disk``,
    ``time``; absent means no limit, except ``gpu``: 0). The tasks are held by the site with
    a lease from now on, in the same transaction. Answer: ``{version, tasks, dep_tasks, jobs,
    datasets, dataset_configs, task_defs, task_def_deps}``, the rows the site needs; the
    site's versions must be newer than ``version``."""
    site_id = _site_id(ctx)
    config = ctx.services.config
    version = master_clock(ctx).tick()
    return await ctx.services.db.write(sync_master.hand_out, site_id, resources or {}, num,
                                       time.time(), config.site_lease_seconds, version)


@rpc_method(SITE, errors=ERRORS)
async def master_update(ctx: Context, changes: list[Any],
                        backlog: int | None = None) -> dict[str, Any]:
    """Apply changes the site made to rows it holds: each ``{table, key, task_id, attempt,
    columns, version}`` for tables ``tasks`` (columns status, failures, req_memory,
    req_disk, req_time), ``task_stats`` and ``task_logs`` (key: the row's id at the site;
    a log larger than one call goes in pieces: ``data`` with ``offset``, ``end`` and
    ``size`` in bytes). Answer: ``{results: [...], applied, refused, version}``, one
    result per change in order: ``{ok: true, outcome: applied|duplicate}`` (acknowledged:
    the site may forget it), ``{ok: true, outcome: stale, version}`` (the task has a newer
    version: a change the site still stands by goes again, stamped above ``version``),
    ``{ok: true, outcome: piece, received}`` (bytes of the log the master holds: go on
    from there), ``{ok: false, error}`` (refused: nothing changed; logged and counted for
    the site) or ``{ok: false, error, retry: true}`` (refused for now, a version too far
    ahead of the master's clock: keep the change, stamp it again). ``backlog``: how many
    changes the site still has queued (shown to admins)."""
    site_id = _site_id(ctx)
    clock = master_clock(ctx)
    config = ctx.services.config
    limits = sync_apply.Limits(clock.wall(), config.site_max_ahead)
    spilled = await site_logs.spill(ctx, changes)
    try:
        out = await ctx.services.db.write(sync_apply.apply_changes, site_id, changes,
                                          time.time(), config.site_lease_seconds, backlog,
                                          limits, spilled)
    except BaseException:
        await site_logs.forget(ctx, spilled.values())
        raise
    results = out["results"]
    await site_logs.forget(ctx, [path for index, path in spilled.items()
                                 if results[index].get("outcome") != "applied"])
    for index, origin in out.pop("assemble"):
        stored = await site_logs.assemble(ctx, site_id, origin)
        results[index] = {"ok": True, "outcome": "applied" if stored else "duplicate"}
        out["applied"] += stored
    newest = out.pop("newest")
    if newest is not None:
        clock.observe(newest)
    if out.pop("completed"):
        ctx.services.wake_scheduler()
    out["version"] = clock.tick()
    return out


@rpc_method(SITE, errors=ERRORS)
async def master_get_tables(ctx: Context, tables: list[str],
                            since: float | dict[str, Any] | None = None) -> dict[str, Any]:
    """What changed at the master for the calling site since the cursor ``since`` (null:
    everything): ``tasks`` it holds or held (``held`` false once the master took one back:
    suspended, reset, reclaimed), ``datasets`` it works on (status, priority), and their
    ``dataset_configs``. The answer's ``cursor`` (an object) is the next call's
    ``since``; at most 5,000 tasks come at a time, and the cursor always moves on. A
    number (a time, as the first protocol's cursor was) is taken too: from that time,
    less 10 s."""
    site_id = _site_id(ctx)
    config = ctx.services.config
    now = time.time()

    def unit(s: Any) -> dict[str, Any]:
        sync_master.touch(s, site_id, now, config.site_lease_seconds)
        return sync_master.tables_since(s, site_id, tables, since, now)

    return await ctx.services.db.write(unit)


@rpc_method(ADMIN, errors=(NOT_AUTHENTICATED, FORBIDDEN, UNAVAILABLE))
async def site_status(ctx: Context) -> list[dict[str, Any]]:
    """Every registered site: ``site_id``, ``name``, ``last_contact``,
    ``seconds_since_contact``, ``tasks_held``, ``outbox_backlog``, ``applied``,
    ``refused`` (changes refused so far), ``clock_offset`` (seconds the site's clock is
    ahead of ours, from the newest version it sent) and ``recent_refusals`` (the last 10:
    created, table, key, reason)."""
    return await ctx.services.db.read(sync_master.site_status, time.time())
