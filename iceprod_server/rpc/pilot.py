"""Pilot methods, with IceProd 2's names, parameters and answers so its pilots can talk
to us unmodified.

Every call about a task must come from the claimant that holds it, and name the current
``attempt`` when it names one; anything else gets -32004 and changes nothing. The claimant
is the passkey plus the ``X-IceProd-Pilot`` header, or, without the header (IceProd 2
pilots of one submission share a key and send none), the passkey plus the caller's
address. Repeating a call that already took effect succeeds and changes nothing. Any call
from the claimant about its task renews the lease: the passkey's own lease, else the
server's ``lease_seconds``.
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from typing import Any

from iceprod_server import metrics
from iceprod_server.db import tasks as task_db
from iceprod_server.db.claims import ClaimRequest
from iceprod_server.errors import CONFLICT, NOT_FOUND, InvalidParams
from iceprod_server.files.logfiles import write_log_file
from iceprod_server.rpc.context import Context
from iceprod_server.rpc.registry import ADMIN, ANYONE, PILOT, Id, rpc_method

LOG_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@rpc_method(ANYONE)
async def echo(ctx: Context, value: Any = None) -> Any:
    """Return ``value`` unchanged: a connectivity check."""
    return value


def _claimant(ctx: Context) -> str:
    caller = ctx.caller
    if caller.pilot_ref or not ctx.remote_ip:
        return caller.claimant
    return f"{caller.claimant}@{ctx.remote_ip}"


def _lease(ctx: Context) -> float:
    return ctx.caller.lease_seconds or ctx.services.config.lease_seconds


def _backoff(ctx: Context) -> task_db.Backoff:
    config = ctx.services.config
    return task_db.Backoff(config.retry_delay_seconds, config.retry_max_delay_seconds)


def _count(value: Any) -> int:
    """IceProd 2 pilots send a GPU count or a list of GPU ids."""
    if isinstance(value, list):
        return len(value)
    return int(value or 0)


@rpc_method(PILOT, ADMIN, errors=(CONFLICT,))
async def new_task(ctx: Context, gridspec: str | None = "", hostname: str | None = "",
                   domain: str | None = "", ifaces: Any = None, os: str | None = None,
                   cpu: int | None = 1, gpu: int | list[Any] | None = 0,
                   memory: float | None = 8.0, disk: float | None = 100.0,
                   time: float | None = 24.0) -> list[dict[str, Any]]:
    """Claim queued tasks that fit in the resources offered, highest priority first.

    ``memory`` and ``disk`` are in GB, ``time`` in hours. Several tasks are packed into the
    offer while they fit; a task needing a GPU goes only to a pilot offering one. Returns a
    list (empty when there is no work) of task descriptions as IceProd 2.3 servers sent
    them: the dataset config itself, with ``dataset`` set to the dataset number and the
    task's options merged into ``options``: task_id, task (name), dataset_id, dataset
    (number), job (index), jobs_submitted, debug, resources (exactly cpu, gpu,
    memory, disk, time) and attempt. Each task is now ``processing`` under the caller's
    claim, whose lease any call about the task renews.
    """
    offer = task_db.Offer(
        cpu=int(cpu if cpu is not None else 1), gpu=_count(gpu),
        memory=float(memory if memory is not None else 8.0),
        disk=float(disk if disk is not None else 100.0),
        time=float(time if time is not None else 24.0), os=os or None)
    if min(offer.cpu, offer.gpu, offer.memory, offer.disk, offer.time) < 0:
        raise InvalidParams("resources offered must not be negative")
    # calls arriving together are claimed together (iceprod_server.db.claims)
    claimed = await ctx.services.claims.claim(
        ClaimRequest(_claimant(ctx), offer, first_lease(ctx)))
    metrics.CLAIMS.inc(len(claimed))
    return claimed


def first_lease(ctx: Context) -> float:
    """Seconds a new claim lives before the pilot's first call about it.

    A pilot that names itself (``X-IceProd-Pilot``, as the reference pilot does) confirms
    each claim with ``stillrunning`` at once; until then the claim lives only
    ``first_contact_seconds``, so a claim whose answer was lost (the server or the link
    went down while answering) goes back to the queue soon instead of after the whole
    lease. IceProd 2 pilots, which first call ``stillrunning`` only once a module runs
    (after their downloads), get the whole lease from the start."""
    lease = _lease(ctx)
    if ctx.caller.pilot_ref:
        return min(ctx.services.config.first_contact_seconds, lease)
    return lease


@rpc_method(PILOT, ADMIN, errors=(NOT_FOUND, CONFLICT))
async def set_processing(ctx: Context, task_id: Id, attempt: int | None = None) -> bool:
    """Claim one queued task by id (or confirm the caller's own claim): -> processing."""
    return await ctx.services.db.write(task_db.set_processing, task_id, _claimant(ctx),
                                       _lease(ctx), attempt)


@rpc_method(PILOT, ADMIN, errors=(NOT_FOUND, CONFLICT))
async def stillrunning(ctx: Context, task_id: Id, attempt: int | None = None) -> bool:
    """Heartbeat: true while the caller holds the task's current attempt, and renews its
    lease; false once that claim is gone (the pilot should stop the task); -32004 for a
    caller that never held it."""
    return await ctx.services.db.write(task_db.still_running, task_id, _claimant(ctx),
                                       _lease(ctx), attempt)


@rpc_method(PILOT, ADMIN, errors=(NOT_FOUND, CONFLICT))
async def finish_task(ctx: Context, task_id: Id, stats: dict[str, Any] | None = None,
                      attempt: int | None = None) -> dict[str, Any]:
    """The caller's attempt succeeded: processing -> complete, with a task_stat row
    (hostname, time_used, resources and whatever else ``stats`` holds). A repeat by the
    same claim succeeds and changes nothing; any other caller gets -32004."""
    result = await ctx.services.finishes.submit(
        task_db.FinishRequest(task_id, _claimant(ctx), stats or {}, attempt))
    if not result["repeated"]:
        metrics.COMPLETIONS.inc()
        ctx.services.wake_scheduler()  # the job's next task may now be released
    return result


@rpc_method(PILOT, ADMIN, errors=(NOT_FOUND, CONFLICT))
async def task_error(ctx: Context, task_id: Id, error_info: dict[str, Any] | None = None,
                     attempt: int | None = None) -> dict[str, Any]:
    """The caller's attempt failed: the failure is counted and stored; the task becomes
    ``reset`` (queued again after the retry back-off, preferably for another pilot),
    ``failed`` once failures reach max_resets, or ``suspended`` for a debug dataset. A
    resource overuse in ``error_info`` (``resources`` used above the requirement, or
    "Resource overuse for memory" in ``error``) grows that requirement 1.5x.
    """
    result = await ctx.services.db.write(task_db.task_error, task_id, _claimant(ctx),
                                         error_info or {}, ctx.services.config.max_resets,
                                         attempt, _backoff(ctx))
    metrics.FAILURES.inc()
    ctx.services.wake_scheduler()
    return result


def _decode_log(data: str) -> str:
    """IceProd 2 pilots send zlib-compressed, base64-encoded text; plain text also works."""
    if len(data) % 4 == 0 and re.fullmatch(r"[A-Za-z0-9+/=\s]*", data):
        try:
            return zlib.decompress(base64.b64decode(data, validate=False)).decode(
                "utf-8", errors="replace")
        except (binascii.Error, zlib.error, ValueError):
            pass
    return data


@rpc_method(PILOT, ADMIN, errors=(NOT_FOUND, CONFLICT))
async def upload_logfile(ctx: Context, task: Id, name: str, data: str | bytes) -> dict[str, Any]:
    """Store a log of the caller's attempt: ``stdout``, ``stderr``, ``stdlog`` or any name
    (letters, digits, ``_.-``). ``data`` is plain text or zlib+base64 text. Logs larger than
    the configured ``log_inline_max`` are kept in files under the data directory.

    The claimant may still upload the logs of an attempt it ended with ``finish_task`` or
    ``task_error`` for a lease's length afterwards; they attach to that attempt."""
    if not LOG_NAME.match(name):
        raise InvalidParams("log name may use letters, digits and _ . - (at most 64)")
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    text = _decode_log(text)
    encoded = text.encode("utf-8")
    db = ctx.services.db
    claimant = _claimant(ctx)
    await db.read(task_db.check_log_writer, task, claimant, _lease(ctx))
    path = None
    inline: str | None = text
    if len(encoded) > ctx.services.config.log_inline_max:
        path = await ctx.services.run_fs(write_log_file, ctx.services.config.path(), task,
                                         name, encoded)
        inline = None
    return await db.write(task_db.store_log, task, claimant, name, len(encoded), inline, path,
                          _lease(ctx))


def _task_ids(tasks: Any) -> list[str]:
    """IceProd 2 pilots send the task ids comma-separated ("" when idle); others a list."""
    if tasks is None:
        return []
    if isinstance(tasks, str):
        items: list[Any] = tasks.split(",")
    elif isinstance(tasks, list | tuple | dict):
        items = list(tasks)
    else:
        items = [tasks]
    ids = [str(t).strip() for t in items if not isinstance(t, dict | list)]
    return [t for t in ids if t]


@rpc_method(PILOT, ADMIN)
async def update_pilot(ctx: Context, pilot_id: str, tasks: Any = None,
                       resources_available: dict[str, Any] | None = None,
                       resources_claimed: dict[str, Any] | None = None,
                       hostname: str = "") -> bool:
    """Record a pilot's state: the tasks it runs (a list of ids, or IceProd 2's
    comma-separated string) and its resources, free and claimed. The leases of the
    caller's tasks among them are renewed."""
    if not pilot_id or len(pilot_id) > 64:
        raise InvalidParams("pilot_id must be 1 to 64 characters")
    await ctx.services.db.write(task_db.update_pilot, pilot_id, ctx.caller.key_id, hostname,
                                _task_ids(tasks), resources_available or {},
                                resources_claimed or {}, _claimant(ctx), _lease(ctx))
    return True
