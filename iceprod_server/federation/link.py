"""A client site's link to its master, three coroutines: the sender pushes the outbox
(``master_update``) and the down-sync applies what changed at the master
(``master_get_tables``), each every ``site_interval`` seconds; the puller checks the local
queue every quarter second and asks for work (``queue_master``) when it runs low.

Nothing lives only in memory: changes wait in the outbox table until the master
acknowledged them, so a restart or a master that is away loses nothing; while the master
cannot be reached the link backs off (up to ``MAX_BACKOFF`` seconds) and local pilots keep
running what is held here.

Every server process of the site starts a link, and one of them runs it: the one holding
the site's ``site_link`` row (:mod:`iceprod_server.db.sync_leader`); the others show its
status and take over when it stops or dies. One puller keeps the site's share of work at
its threshold, one sender and one clock make the versions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import tornado.httpclient

from iceprod_server.config import MIN_PUSH_BYTES
from iceprod_server.db import sync_client, sync_leader, sync_outbox
from iceprod_server.federation.hlc import HybridClock, wall_clock
from iceprod_server.services import Services

log = logging.getLogger(__name__)

MAX_BACKOFF = 10.0
PULLS_PER_ROUND = 5
MAX_PULL = 1000  # what queue_master hands out at most
# seconds between checks of the local queue (at most site_interval)
PULL_CHECK = 0.25
DOWN_TABLES = ["tasks", "datasets", "dataset_configs"]
# bytes of a call's body from which it asks the master first (Expect: 100-continue)
EXPECT_CONTINUE_FROM = 64 * 1024
# a process holds the link this many intervals (at least HOLD_MIN seconds) past its last
# renewal, and acts on it only for the first half of that: a holder that cannot renew
# stops before another may take over
HOLD_INTERVALS = 10
HOLD_MIN = 3.0
COUNTS = ("pulled", "pushed", "refused", "taken_back")


class LinkDown(Exception):
    """The master could not be reached, or answered with an error."""


class TooLarge(LinkDown):
    """The master refused the call's body as too large (HTTP 413)."""


class SiteLink:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.config = services.config
        self.clock = HybridClock(self.config.site_id,
                                 wall_clock(self.config.debug_clock_offset))
        self.http = tornado.httpclient.AsyncHTTPClient()
        self.cursor: Any = None
        self.push_bytes = self.config.site_push_bytes
        self._tasks: list[asyncio.Task[None]] = []
        self.holder = f"{socket.gethostname()[:80]}:{os.getpid()}:{secrets.token_hex(4)}"
        self.hold = max(HOLD_MIN, HOLD_INTERVALS * self.config.site_interval)
        self._leading_until = 0.0
        self._shown: dict[str, Any] | None = None
        # what the overview page shows
        self.last_contact: float | None = None
        self.last_error = ""
        self.pulled = self.pushed = self.refused = self.taken_back = 0
        self.backlog = 0

    # -- life ---------------------------------------------------------------------------

    def start(self) -> None:
        interval = self.config.site_interval
        self._tasks = [
            asyncio.create_task(self._leading(), name="site-leader"),
            asyncio.create_task(self._every(self.push, interval), name="site-sender"),
            asyncio.create_task(self._every(self.down, interval), name="site-down"),
            # the local queue is checked often (a cheap count): pilots must not wait
            asyncio.create_task(self._every(self.pull, min(interval, PULL_CHECK)),
                                name="site-puller"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks = []
        if self.leading:
            self._leading_until = 0.0
            try:
                await self.services.db.write(sync_leader.let_go, self.holder)
            except Exception:
                log.exception("could not hand the link over; another process takes it "
                              "over within %g s", self.hold)

    @property
    def leading(self) -> bool:
        return time.monotonic() < self._leading_until

    def status(self) -> dict[str, Any]:
        if not self.leading and self._shown is not None:
            return self._shown  # the link runs in another process: what it wrote
        return self._own_status()

    def _own_status(self) -> dict[str, Any]:
        return {"master": self.config.site_master, "site_id": self.config.site_id,
                "last_contact": self.last_contact, "connected": not self.last_error,
                "last_error": self.last_error, "outbox_backlog": self.backlog,
                "pulled": self.pulled, "pushed": self.pushed, "refused": self.refused,
                "taken_back": self.taken_back}

    async def _leading(self) -> None:
        """Take or keep the link every interval, sharing its status."""
        while True:
            try:
                await self.lead()
            except Exception:
                log.exception("cannot check which process runs the link")
            await asyncio.sleep(self.config.site_interval)

    async def lead(self) -> None:
        was = self.leading
        started = time.monotonic()
        status = {**self._own_status(), "cursor": self.cursor, "holder": self.holder}
        leading, before = await self.services.db.write(
            sync_leader.lead, self.holder, time.time(), self.hold, status)
        if not leading:
            self._leading_until = 0.0
            self._shown = before
            return
        if not was:
            # another process may have run the link: its versions and its place in the
            # master's changes are in the database
            await self.services.db.read(sync_client.load_clock, self.clock)
            if before and before.get("holder") != self.holder:
                self.cursor = before.get("cursor")
                # the counts the overview shows are the site's, carried from holder to
                # holder (a restart included)
                for name in COUNTS:
                    if isinstance(before.get(name), int):
                        setattr(self, name, before[name])
            log.info("this process runs the link to the master")
        self._leading_until = started + self.hold / 2

    async def _every(self, step: Callable[[], Awaitable[None]], interval: float) -> None:
        """Run ``step`` every ``interval`` seconds while this process runs the link,
        backing off (doubling, up to ten intervals and at most MAX_BACKOFF) while the
        master cannot be reached."""
        delay = interval
        # a returning master is noticed within ten intervals (and MAX_BACKOFF)
        longest = min(MAX_BACKOFF, 10 * self.config.site_interval)
        while True:
            if not self.leading:
                await asyncio.sleep(interval)
                continue
            try:
                await step()
                self.last_error = ""
                delay = interval
            except LinkDown as e:
                if not self.last_error:
                    log.warning("master unreachable: %s", e)
                self.last_error = str(e)
                delay = min(longest, max(delay, interval) * 2)
            except Exception as e:
                log.exception("site link step %s failed", getattr(step, "__name__", step))
                self.last_error = f"{type(e).__name__}: {e}"
                delay = min(longest, max(delay, interval) * 2)
            await asyncio.sleep(delay)

    # -- the steps ------------------------------------------------------------------------

    async def call(self, method: str, **params: Any) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        request = tornado.httpclient.HTTPRequest(
            self.config.site_master, method="POST", body=body,
            headers={"Content-Type": "application/json",
                     "Authorization": f"Bearer {self.config.site_key}"},
            connect_timeout=10.0, request_timeout=120.0,
            # a large body waits for the master's (or nginx's) go-ahead: a body over its
            # limit is then refused with 413 before it is sent, where sending it would
            # end in a broken connection that says nothing about the size
            expect_100_continue=len(body) > EXPECT_CONTINUE_FROM)
        try:
            response = await self.http.fetch(request)
            answer = json.loads(response.body)
        except tornado.httpclient.HTTPClientError as e:
            if e.code == 413:
                raise TooLarge(f"{method}: {len(body)} bytes refused as too large") from e
            raise LinkDown(f"{method}: {e}") from e
        except (OSError, ValueError) as e:
            raise LinkDown(f"{method}: {e}") from e
        if not isinstance(answer, dict):
            raise LinkDown(f"{method}: not a JSON-RPC answer")
        if answer.get("error"):
            error = answer["error"]
            raise LinkDown(f"{method}: {error.get('code')} {error.get('message')}"
                           if isinstance(error, dict) else f"{method}: {error}")
        self.last_contact = time.time()
        return answer.get("result")

    async def push(self) -> None:
        """Send the outbox, a call at a time, until it is empty or a call moves nothing."""
        db = self.services.db
        restamped = False
        while True:
            changes = await db.write(sync_outbox.take_outbox, self.config.site_push_batch,
                                     self.push_bytes, self.clock, str(self.config.path()))
            backlog = await db.read(sync_outbox.outbox_size)
            if not changes:
                if self.backlog:
                    # tell the master the backlog is gone (its admin page shows it)
                    await self.call("master_update", changes=[], backlog=0)
                self.backlog = 0
                return
            self.backlog = backlog
            sent = [{k: v for k, v in c.items() if k != "outbox_ids"} for c in changes]
            try:
                answer = await self.call("master_update", changes=sent, backlog=backlog)
            except TooLarge:
                # a refused call is split, never repeated: the master takes less than we
                # send (its max_body_bytes), so every later call is half the size
                if self.push_bytes <= MIN_PUSH_BYTES:
                    raise
                self.push_bytes = max(MIN_PUSH_BYTES, self.push_bytes // 2)
                log.warning("the master refused a call of %d changes as too large: calls "
                            "carry at most %d bytes from now on", len(sent), self.push_bytes)
                continue
            if answer.get("version"):
                self.clock.observe(answer["version"])
            moved, again = await self._settle(changes, answer)
            if again:
                if restamped:
                    return  # stamped anew once this round; the next round sends them
                restamped = True
            elif not moved:
                return

    async def _settle(self, changes: list[dict[str, Any]],
                      answer: dict[str, Any]) -> tuple[bool, bool]:
        """Act on the master's answer to ``changes``: ``(anything acknowledged or a log
        piece further, anything to send again stamped anew)``. Raises LinkDown, after
        settling, when the master refused versions as too far ahead."""
        done: list[int] = []
        pieces: list[tuple[list[int], int]] = []
        again: list[int] = []
        ahead: list[str] = []
        refused_tasks: list[str] = []
        for change, result in zip(changes, answer["results"], strict=True):
            ids, outcome = change["outbox_ids"], result.get("outcome")
            if result.get("ok") and outcome == "stale" and change["table"] == "tasks":
                # the master has a newer version of the task than this change; the change
                # is the task's state here, which this site stands by: it goes again,
                # stamped above that version (dropping it would leave the task held)
                self._observe(result.get("version"))
                again += ids
            elif result.get("ok") and outcome == "piece":
                received = result.get("received")
                if isinstance(received, int) and not isinstance(received, bool):
                    pieces.append((ids, received))
            elif result.get("ok"):
                done += ids
                self.pushed += 1
            elif result.get("retry"):
                again += ids
                ahead.append(str(result.get("error")))
            else:
                # refused: the master has decided, the change goes
                done += ids
                self.refused += 1
                log.info("master refused %s %s: %s", change["table"], change["key"],
                         result.get("error"))
                refused_tasks.append(change["task_id"])
        floor = None
        if ahead:
            # our versions run ahead of what the master accepts: start the clock again
            # from the wall clock (or the master's newest version, if later), so that the
            # changes go again as soon as this site's clock is right
            self.clock.rebase(answer.get("version"))
            floor = self.clock.last
        db = self.services.db
        await db.write(sync_outbox.settle, done, pieces, again, floor)
        if refused_tasks:
            self.taken_back += await db.write(sync_client.take_back, refused_tasks)
        if ahead:
            raise LinkDown(f"master_update: {len(ahead)} changes refused for now: {ahead[0]}")
        return bool(done or pieces), bool(again)

    def _observe(self, version: Any) -> None:
        try:
            self.clock.observe(version)
        except ValueError:
            pass  # no version (an older master): the answer's own version was taken in

    async def down(self) -> None:
        answer = await self.call("master_get_tables", tables=DOWN_TABLES, since=self.cursor)
        result = await self.services.db.write(sync_client.apply_down, answer)
        if result["taken_back"]:
            log.info("master took back %d tasks", result["taken_back"])
            self.taken_back += result["taken_back"]
        self.cursor = answer["cursor"]

    async def pull(self) -> None:
        """Ask for work while fewer than ``site_threshold`` pulled tasks wait here (a few
        calls per check at most)."""
        db = self.services.db
        for _ in range(PULLS_PER_ROUND):
            waiting = await db.read(sync_client.unfinished_pulled)
            if waiting >= self.config.site_threshold:
                return
            payload = await self.call("queue_master", resources={}, num=min(
                MAX_PULL, max(self.config.site_pull, self.config.site_threshold - waiting)))
            if payload.get("version"):
                self.clock.observe(payload["version"])
            if not payload.get("tasks"):
                return
            n = await db.write(sync_client.merge_work, payload)
            self.pulled += n
            log.info("pulled %d tasks from the master", n)
            if n < self.config.site_pull:
                return


# the link of this process, when it is a client site (the overview page shows it)
current: SiteLink | None = None
