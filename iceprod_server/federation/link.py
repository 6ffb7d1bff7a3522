"""A client site's link to its master, three coroutines: the sender pushes the outbox
(``master_update``) and the down-sync applies what changed at the master
(``master_get_tables``), each every ``site_interval`` seconds; the puller checks the local
queue every quarter second and asks for work (``queue_master``) when it runs low.

Nothing lives only in memory: changes wait in the outbox table until the master
acknowledged them, so a restart or a master that is away loses nothing; while the master
cannot be reached the link backs off (up to ``MAX_BACKOFF`` seconds) and local pilots keep
running what is held here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import tornado.httpclient

from iceprod_server.db import sync_client
from iceprod_server.federation.hlc import HybridClock
from iceprod_server.services import Services

log = logging.getLogger(__name__)

MAX_BACKOFF = 10.0
PULLS_PER_ROUND = 5
MAX_PULL = 1000  # what queue_master hands out at most
# seconds between checks of the local queue (at most site_interval)
PULL_CHECK = 0.25
DOWN_TABLES = ["tasks", "datasets", "dataset_configs"]


class LinkDown(Exception):
    """The master could not be reached, or answered with an error."""


class SiteLink:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.config = services.config
        self.clock = HybridClock(self.config.site_id)
        self.http = tornado.httpclient.AsyncHTTPClient()
        self.cursor: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._clock_lock = asyncio.Lock()
        self._loaded = False
        # what the overview page shows
        self.last_contact: float | None = None
        self.last_error = ""
        self.pulled = self.pushed = self.refused = self.taken_back = 0
        self.backlog = 0

    # -- life ---------------------------------------------------------------------------

    def start(self) -> None:
        interval = self.config.site_interval
        self._tasks = [
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

    def status(self) -> dict[str, Any]:
        return {"master": self.config.site_master, "site_id": self.config.site_id,
                "last_contact": self.last_contact, "connected": not self.last_error,
                "last_error": self.last_error, "outbox_backlog": self.backlog,
                "pulled": self.pulled, "pushed": self.pushed, "refused": self.refused,
                "taken_back": self.taken_back}

    async def _every(self, step: Callable[[], Awaitable[None]], interval: float) -> None:
        """Run ``step`` every ``interval`` seconds, backing off (doubling, up to ten
        intervals and at most MAX_BACKOFF) while the master cannot be reached."""
        await self._clock_loaded()
        delay = interval
        # a returning master is noticed within ten intervals (and MAX_BACKOFF)
        longest = min(MAX_BACKOFF, 10 * self.config.site_interval)
        while True:
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

    async def _clock_loaded(self) -> None:
        async with self._clock_lock:
            while not self._loaded:
                try:
                    await self.services.db.read(sync_client.load_clock, self.clock)
                    self._loaded = True
                except Exception:
                    log.exception("cannot read the site clock; retrying")
                    await asyncio.sleep(self.config.site_interval)

    # -- the steps ------------------------------------------------------------------------

    async def call(self, method: str, **params: Any) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        request = tornado.httpclient.HTTPRequest(
            self.config.site_master, method="POST", body=body,
            headers={"Content-Type": "application/json",
                     "Authorization": f"Bearer {self.config.site_key}"},
            connect_timeout=10.0, request_timeout=120.0)
        try:
            response = await self.http.fetch(request)
            answer = json.loads(response.body)
        except (OSError, tornado.httpclient.HTTPClientError, ValueError) as e:
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
        """Send the outbox in batches until it is empty; forget what was acknowledged."""
        db = self.services.db
        batch = self.config.site_push_batch
        while True:
            changes = await db.write(sync_client.take_outbox, batch, self.clock,
                                     str(self.config.path()))
            backlog = await db.read(sync_client.outbox_size)
            if not changes:
                if self.backlog:
                    # tell the master the backlog is gone (its admin page shows it)
                    await self.call("master_update", changes=[], backlog=0)
                self.backlog = 0
                return
            self.backlog = backlog
            sent = [{k: v for k, v in c.items() if k != "outbox_ids"} for c in changes]
            answer = await self.call("master_update", changes=sent, backlog=self.backlog)
            if answer.get("version"):
                self.clock.observe(answer["version"])
            done: list[int] = []
            refused_tasks: list[str] = []
            for change, result in zip(changes, answer["results"], strict=True):
                # acknowledged or refused: either way the master has decided
                done.extend(change["outbox_ids"])
                if not result.get("ok"):
                    self.refused += 1
                    log.info("master refused %s %s: %s", change["table"], change["key"],
                             result.get("error"))
                    refused_tasks.append(change["task_id"])
            await db.write(sync_client.acknowledge, done)
            if refused_tasks:
                self.taken_back += await db.write(sync_client.take_back, refused_tasks)
            self.pushed += len(changes)
            if len(done) < batch:
                return

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
