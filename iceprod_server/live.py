"""Live snapshots for the pages: each update is computed once and sent to every viewer.

A *topic* (``overview``, ``dataset/<id>``) has a :class:`Broadcaster` while someone
watches it: one coroutine that builds the topic's snapshot (one unit of work on the db
pool) at most once per ``interval`` seconds and hands it to every subscriber when it
differs from the last one sent, plus a keep-alive comment when nothing was sent for
``keepalive`` seconds (so proxies do not close an idle stream). When the last subscriber
leaves, the coroutine ends before its next build and the topic is forgotten.

A subscriber keeps only the newest message: a slow client skips snapshots instead of
making a queue grow.

The snapshot builders at the end are units of work made only of the reads in
:mod:`iceprod_server.db.reads`, all run in one transaction so a snapshot is consistent.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.orm import Session

from iceprod_server.db import reads

log = logging.getLogger(__name__)

Build = Callable[[], Awaitable[Any]]

KEEPALIVE = ": keep-alive\n\n"
ACTIVE_DATASETS_SHOWN = 10
THROUGHPUT_HOURS = 24


def sse_message(data: str) -> str:
    """One server-sent event carrying ``data`` (JSON text has no newlines to split)."""
    return f"data: {data}\n\n"


class Subscriber:
    """One viewer's mailbox: the newest message not yet written, if any."""

    def __init__(self) -> None:
        self._pending: str | None = None
        self._wake = asyncio.Event()
        self.closed = False

    def offer(self, message: str) -> None:
        self._pending = message
        self._wake.set()

    def offer_keepalive(self) -> None:
        # a snapshot still waiting to be written already keeps the stream alive
        if self._pending is None:
            self.offer(KEEPALIVE)

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def next(self) -> str | None:
        """The next message to write; None once the subscriber is closed."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.closed:
                return None
            if self._pending is not None:
                message, self._pending = self._pending, None
                return message


class Broadcaster:
    """Builds one topic's snapshot for all of its subscribers."""

    def __init__(self, topic: str, build: Build, interval: float, keepalive: float,
                 on_idle: Callable[[Broadcaster], None]) -> None:
        self.topic = topic
        self.build = build
        self.interval = interval
        self.keepalive = keepalive
        self.on_idle = on_idle
        self.subscribers: set[Subscriber] = set()
        self.builds = 0  # snapshots built, for diagnostics and tests
        self.last: str | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    def subscribe(self) -> Subscriber:
        subscriber = Subscriber()
        self.subscribers.add(subscriber)
        if self.last is not None:
            # a newcomer sees the current state at once, not after the next change
            subscriber.offer(sse_message(self.last))
        if self._task is None:
            log.debug("live %s: first viewer, broadcasting", self.topic)
            self._task = asyncio.create_task(self._run(), name=f"live {self.topic}")
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)
        subscriber.close()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last_sent = loop.time()
        failing = False
        try:
            # no await between this check and the end of the loop: a subscriber that
            # arrives later finds either this coroutine still running or none at all
            while self.subscribers:
                started = loop.time()
                try:
                    snapshot = await self.build()
                    self.builds += 1
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    # the database may be down for a while: keep the viewers, try again
                    if not failing:
                        log.warning("live %s: snapshot failed: %s", self.topic, e)
                    failing = True
                else:
                    failing = False
                    payload = json.dumps(snapshot, sort_keys=True, separators=(",", ":"))
                    if payload != self.last:
                        self.last = payload
                        message = sse_message(payload)
                        for subscriber in self.subscribers:
                            subscriber.offer(message)
                        last_sent = loop.time()
                if loop.time() - last_sent >= self.keepalive:
                    for subscriber in self.subscribers:
                        subscriber.offer_keepalive()
                    last_sent = loop.time()
                await asyncio.sleep(max(0.0, started + self.interval - loop.time()))
        finally:
            log.debug("live %s: no viewers left, stopped after %d snapshots", self.topic,
                      self.builds)
            self._task = None
            for subscriber in self.subscribers:
                subscriber.close()
            self.subscribers.clear()
            self.on_idle(self)


class LiveHub:
    """The broadcasters of one server process, by topic."""

    def __init__(self, interval: float = 1.0, keepalive: float = 15.0) -> None:
        self.interval = interval
        self.keepalive = keepalive
        self.topics: dict[str, Broadcaster] = {}

    def subscribe(self, topic: str, build: Build) -> tuple[Broadcaster, Subscriber]:
        """Join ``topic``, starting its broadcaster (with ``build``) if nobody watches it."""
        broadcaster = self.topics.get(topic)
        if broadcaster is None:
            broadcaster = Broadcaster(topic, build, self.interval, self.keepalive,
                                      self._forget)
            self.topics[topic] = broadcaster
        return broadcaster, broadcaster.subscribe()

    def close(self) -> None:
        """End every viewer's stream (the server is stopping); browsers reconnect to
        another process."""
        for broadcaster in list(self.topics.values()):
            for subscriber in list(broadcaster.subscribers):
                broadcaster.unsubscribe(subscriber)

    def _forget(self, broadcaster: Broadcaster) -> None:
        if self.topics.get(broadcaster.topic) is broadcaster:
            del self.topics[broadcaster.topic]


# --- snapshots ---------------------------------------------------------------------------

def overview_snapshot(s: Session) -> dict[str, Any]:
    """What the overview page shows: datasets by status, the first processing datasets
    with their progress, tasks by status across the system, and throughput per hour."""
    by_status = reads.datasets_by_status(s)
    active = reads.list_datasets(s, status="processing", limit=ACTIVE_DATASETS_SHOWN)
    datasets = []
    for d in active["items"]:
        counts = reads.task_counts(s, d["dataset_id"])
        datasets.append({"dataset_id": d["dataset_id"], "dataset_num": d["dataset_num"],
                         "description": d["description"], "owner": d["owner"],
                         "counts": counts})
    return {
        "datasets": {status: len(ids) for status, ids in by_status.items()},
        "active": datasets,
        "more_active": active["next"] is not None,
        "tasks": reads.system_task_counts(s),
        "throughput": reads.throughput(s, None, THROUGHPUT_HOURS),
    }


def dataset_snapshot(s: Session, dataset_id: str) -> dict[str, Any]:
    """What a dataset page redraws: ``{counts, by_name, throughput, dataset}``."""
    return {
        "dataset": reads.get_dataset(s, dataset_id),
        "counts": reads.task_counts(s, dataset_id),
        "by_name": reads.task_counts_by_name(s, dataset_id),
        "throughput": reads.throughput(s, dataset_id, THROUGHPUT_HOURS),
    }
