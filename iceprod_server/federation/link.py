"""A client site's link to its master: one coroutine that, every ``site_interval``
seconds, pushes the outbox (``master_update``), applies what changed at the master
(``master_get_tables``) and pulls work when the local queue runs low (``queue_master``).

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
from typing import Any

import tornado.httpclient

from iceprod_server.db import sync_client
from iceprod_server.federation.hlc import HybridClock
from iceprod_server.services import Services

log = logging.getLogger(__name__)

MAX_BACKOFF = 30.0
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
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        # what the overview page shows
        self.last_contact: float | None = None
        self.last_error = ""
        self.pulled = self.pushed = self.refused = self.taken_back = 0
        self.backlog = 0

    # -- life ---------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="site-link")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def status(self) -> dict[str, Any]:
        return {"master": self.config.site_master, "site_id": self.config.site_id,
                "last_contact": self.last_contact, "connected": not self.last_error,
                "last_error": self.last_error, "outbox_backlog": self.backlog,
                "pulled": self.pulled, "pushed": self.pushed, "refused": self.refused,
                "taken_back": self.taken_back}

    async def _loop(self) -> None:
        db = self.services.db
        backoff = self.config.site_interval
        loaded = False
        while True:
            try:
                if not loaded:
                    await db.read(sync_client.load_clock, self.clock)
                    loaded = True
                await self.round()
                self.last_error = ""
                backoff = self.config.site_interval
                delay = self.config.site_interval
            except LinkDown as e:
                if not self.last_error:
                    log.warning("master unreachable: %s", e)
                self.last_error = str(e)
                backoff = min(MAX_BACKOFF, backoff * 2)
                delay = backoff
            except Exception as e:
                log.exception("site link round failed")
                self.last_error = f"{type(e).__name__}: {e}"
                delay = backoff = min(MAX_BACKOFF, backoff * 2)
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass
            self._wake.clear()

    # -- one round ------------------------------------------------------------------------

    async def round(self) -> None:
        await self.push()
        await self.down()
        await self.pull()

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
        db = self.services.db
        waiting = await db.read(sync_client.unfinished_pulled)
        if waiting >= self.config.site_threshold:
            return
        payload = await self.call("queue_master", resources={}, num=self.config.site_pull)
        if payload.get("version"):
            self.clock.observe(payload["version"])
        if payload.get("tasks"):
            n = await db.write(sync_client.merge_work, payload)
            self.pulled += n
            log.info("pulled %d tasks from the master", n)


# the link of this process, when it is a client site (the overview page shows it)
current: SiteLink | None = None
