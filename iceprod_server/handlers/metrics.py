"""``GET /metrics``: the Prometheus text format, for admins and the ``metrics_allow``
addresses (by default the machine itself, where a Prometheus agent usually runs)."""

from __future__ import annotations

import asyncio
import ipaddress
from concurrent.futures import ThreadPoolExecutor

import tornado.web

from iceprod_server import metrics
from iceprod_server.db import reads
from iceprod_server.errors import IceProdError
from iceprod_server.handlers.base import BaseHandler
from iceprod_server.services import Services


def allowed_address(address: str, networks: tuple[str, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)


def _busy_and_queued(pool: ThreadPoolExecutor) -> tuple[int, int]:
    # the pool's own counters: not public, but stable across Python 3 versions
    queued = pool._work_queue.qsize()
    idle = pool._idle_semaphore._value
    return max(0, len(pool._threads) - idle), queued


def sample(services: Services) -> None:
    """Set the gauges that describe this moment in this process."""
    for name in ("db", "fs", "gsiftp"):
        pool = getattr(services.executors, name, None)
        if isinstance(pool, ThreadPoolExecutor):
            busy, queued = _busy_and_queued(pool)
            metrics.EXECUTOR_BUSY.labels(pool=name).set(busy)
            metrics.EXECUTOR_QUEUE.labels(pool=name).set(queued)
    metrics.LIVE_VIEWERS.set(sum(len(b.subscribers) for b in services.live.topics.values()))


async def sampler(services: Services) -> None:
    """Sample the gauges of this process until cancelled."""
    while True:
        sample(services)
        await asyncio.sleep(metrics.SAMPLE_SECONDS)


class MetricsHandler(BaseHandler):
    bearer_challenge = True

    def wants_json(self) -> bool:
        return True

    async def get(self) -> None:
        if not allowed_address(self.remote_ip(), self.services.config.metrics_allow):
            await self.require_admin()
        try:
            counts = await self.services.db.read(reads.system_task_counts)
        except IceProdError:
            counts = None  # the database is away: the rest of the metrics still help
        if counts is not None:
            metrics.set_task_counts(counts)
        sample(self.services)
        # several workers' figures are read from files: on the fs pool, not the loop
        body, content_type = await self.services.run_fs(metrics.exposition)
        self.set_header("Content-Type", content_type)
        self.set_header("Cache-Control", "no-store")
        self.finish(body)

    async def require_admin(self) -> None:
        if self.bearer_token() is None and self.caller.role is None:
            raise tornado.web.HTTPError(401, "log in as an admin, or send an admin passkey "
                                        "as Authorization: Bearer")
        try:
            caller = await self.caller_from_request()
        except IceProdError as e:
            raise tornado.web.HTTPError(401, "%s", e.reason) from None
        if caller.role != "admin":
            raise tornado.web.HTTPError(403, "only admins (and metrics_allow addresses) may "
                                        "read the metrics")


def routes() -> list[tuple[str, type]]:
    return [(r"/metrics", MetricsHandler)]
