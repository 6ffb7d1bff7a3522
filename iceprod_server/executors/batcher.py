"""Calls of one kind that arrive together go to the database together.

A :class:`Batcher` holds a unit of work that takes a list of requests and answers each.
A call arriving while no group of its kind is in the database goes at once; calls arriving
meanwhile wait and go together in the next group: one unit of work, one transaction, one
commit. Under load the groups grow by themselves; alone, a call waits for nobody.

The unit answers each request with its result, or with an exception instance that concerns
that caller alone (a refused claim, a task that is not the caller's), which is raised for
that caller only. If the whole unit fails, every member of the group runs again alone, so
that one caller's bad request is not the others' failure. What the database did to the
group's one transaction is each member's own outcome, and is told to each: -32005 (nothing
committed) or -32006 (the COMMIT's outcome unknown; running the members again could do
their work twice, so they are not). Calls still waiting for the next group had no part in
it: they go on, and a database known to be away answers them -32005 at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from iceprod_server.errors import OutcomeUnknown, Unavailable

Req = TypeVar("Req")
Ans = TypeVar("Ans")


class Batcher(Generic[Req, Ans]):
    """Gathers the calls of one kind of one process. ``write`` runs a unit of work (the
    process's :class:`~iceprod_server.executors.database.Database`); ``unit(session,
    requests)`` answers a group."""

    def __init__(self, write: Callable[..., Awaitable[Any]],
                 unit: Callable[[Any, list[Req]], Sequence[Ans | BaseException]],
                 max_group: int = 200) -> None:
        self.write = write
        self.unit = unit
        self.max_group = max_group
        self._waiting: list[tuple[Req, asyncio.Future[Ans]]] = []
        self._running = False
        self._task: asyncio.Future[None] | None = None  # held: the loop keeps weak refs
        self.groups = 0  # units of work run, and the calls they answered: for the curious
        self.calls = 0

    async def submit(self, request: Req) -> Ans:
        future: asyncio.Future[Ans] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future))
        if not self._running:
            self._running = True
            self._task = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                group = self._waiting[:self.max_group]
                del self._waiting[:self.max_group]
                await self._run(group)
        finally:
            self._running = False

    async def _run(self, group: list[tuple[Req, asyncio.Future[Ans]]]) -> None:
        try:
            answers = await self.write(self.unit, [r for r, _ in group])
            self.groups += 1
            self.calls += len(group)
        except (Unavailable, OutcomeUnknown) as e:  # the group's transaction: each member's
            for _, future in group:
                if not future.done():
                    future.set_exception(e)
            return
        except Exception as e:  # noqa: BLE001 - one caller's request may be at fault
            if len(group) > 1:
                # each alone, so that one caller's failure is not the others'
                await asyncio.gather(*(self._run([member]) for member in group))
                return
            if not group[0][1].done():
                group[0][1].set_exception(e)
            return
        for (_, future), answer in zip(group, answers, strict=True):
            if future.done():
                continue
            if isinstance(answer, BaseException):
                future.set_exception(answer)
            else:
                future.set_result(answer)
