"""``GET /live/overview`` and ``GET /live/dataset/<id>``: server-sent event streams that
keep the overview and dataset pages up to date without reloading.

Each message is a whole snapshot as JSON (``data: {...}``); a comment line keeps an idle
stream open. The snapshots come from the process's :class:`~iceprod_server.live.LiveHub`,
which computes each one once for every viewer of a page. The streams are readable
anonymously while ``public_read`` is on, like the pages they feed.
"""

from __future__ import annotations

import logging
from typing import Any

import tornado.web
from tornado.iostream import StreamClosedError

from iceprod_server import live
from iceprod_server.db import reads
from iceprod_server.errors import NotFound
from iceprod_server.handlers.base import BaseHandler
from iceprod_server.live import Build, LiveHub, Subscriber

log = logging.getLogger(__name__)

# how long a browser waits before it reconnects a dropped stream
RETRY_MS = 3000


class LiveHandler(BaseHandler):
    def initialize(self, hub: LiveHub) -> None:
        self.hub = hub
        self.subscription: tuple[live.Broadcaster, Subscriber] | None = None

    async def prepare(self) -> None:
        await super().prepare()
        if self.caller.role is None and not self.services.config.public_read:
            raise tornado.web.HTTPError(403, "log in to watch this page")

    def wants_json(self) -> bool:
        # an EventSource cannot show an error page; keep refusals short
        return True

    async def stream(self, topic: str, build: Build) -> None:
        """Write the topic's snapshots until the client goes away or the server stops."""
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache, no-store")
        # nginx would otherwise buffer the stream and deliver it in lumps
        self.set_header("X-Accel-Buffering", "no")
        self.subscription = self.hub.subscribe(topic, build)
        broadcaster, subscriber = self.subscription
        try:
            self.write(f"retry: {RETRY_MS}\n\n")
            await self.flush()
            while True:
                message = await subscriber.next()
                if message is None:
                    break
                self.write(message)
                await self.flush()
        except StreamClosedError:
            pass
        finally:
            broadcaster.unsubscribe(subscriber)

    def on_connection_close(self) -> None:
        if self.subscription is not None:
            broadcaster, subscriber = self.subscription
            broadcaster.unsubscribe(subscriber)
        super().on_connection_close()


class OverviewStream(LiveHandler):
    async def get(self) -> None:
        db = self.services.db

        async def build() -> Any:
            return await db.read(live.overview_snapshot)

        await self.stream("overview", build)


class DatasetStream(LiveHandler):
    async def get(self, dataset_id: str) -> None:
        try:
            await self.services.db.read(reads.get_dataset, dataset_id)
        except NotFound as e:
            raise tornado.web.HTTPError(404, str(e)) from e
        db = self.services.db

        async def build() -> Any:
            return await db.read(live.dataset_snapshot, dataset_id)

        await self.stream(f"dataset/{dataset_id}", build)


def routes(hub: LiveHub) -> list[tuple[str, type, dict[str, Any]]]:
    return [(r"/live/overview", OverviewStream, {"hub": hub}),
            (r"/live/dataset/([0-9A-Za-z]{1,64})", DatasetStream, {"hub": hub})]
