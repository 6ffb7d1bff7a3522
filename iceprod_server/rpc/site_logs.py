"""The master's side of the logs a client site sends, the file part of it: a log over
``log_inline_max`` that came whole is written to a file before its change is applied, as a
pilot's would be (and removed again unless the change was applied), and a log that came in
pieces is written out, piece by piece, once its last piece is in
(:mod:`iceprod_server.db.sync_logs` keeps the pieces). Files are written on the ``fs``
pool, pieces read one at a time: memory holds one piece, whatever the log's size.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from iceprod_server.db import sync_logs
from iceprod_server.db.sync_apply import PIECE_KEYS
from iceprod_server.files.logfiles import LogFileWriter, remove_log_file, write_log_file
from iceprod_server.rpc.context import Context

# what may become part of a file name here; anything else stays in the change and is
# judged (and refused, or kept in the database row) by the unit of work
_TASK_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


async def spill(ctx: Context, changes: list[Any]) -> dict[int, str]:
    """Write the data of each whole log over ``log_inline_max`` to a file; ``{index of
    the change: path}``."""
    config = ctx.services.config
    spilled: dict[int, str] = {}
    try:
        for index, change in enumerate(changes):
            if not isinstance(change, dict) or change.get("table") != "task_logs":
                continue
            columns, task_id = change.get("columns"), change.get("task_id")
            if (not isinstance(columns, dict) or any(k in columns for k in PIECE_KEYS)
                    or not isinstance(columns.get("data"), str)
                    or not isinstance(task_id, str) or not _TASK_ID.match(task_id)
                    or not isinstance(columns.get("name"), str)
                    or not _NAME.match(columns["name"])):
                continue
            encoded = columns["data"].encode(errors="replace")
            if len(encoded) > config.log_inline_max:
                spilled[index] = await ctx.services.run_fs(
                    write_log_file, config.path(), task_id, columns["name"], encoded)
    except BaseException:
        await forget(ctx, spilled.values())
        raise
    return spilled


async def forget(ctx: Context, paths: Iterable[str]) -> None:
    """Remove files :func:`spill` wrote for changes that were not applied."""
    for path in paths:
        await ctx.services.run_fs(remove_log_file, ctx.services.config.path(), path)


async def assemble(ctx: Context, site_id: str, origin: str) -> bool:
    """Write the log ``origin`` out from its pieces and store it; False if it was stored
    already (by another call with the same last piece)."""
    db = ctx.services.db
    owner = await db.read(sync_logs.piece_owner, origin)
    if owner is None:
        return False
    root = ctx.services.config.path()
    writer = await ctx.services.run_fs(LogFileWriter, root, *owner)
    try:
        for offset in await db.read(sync_logs.piece_offsets, origin):
            data = await db.read(sync_logs.piece_data, origin, offset)
            await ctx.services.run_fs(writer.append, data.encode(errors="replace"))
        path = await ctx.services.run_fs(writer.commit)
    except BaseException:
        await ctx.services.run_fs(writer.abort)
        raise
    try:
        stored = await db.write(sync_logs.store_assembled, site_id, origin, path, writer.size)
    except BaseException:
        await forget(ctx, [path])
        raise
    if not stored:
        await forget(ctx, [path])
    return bool(stored)
