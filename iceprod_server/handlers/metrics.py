"""``GET /metrics``: the Prometheus text format, for admins and the ``metrics_allow``
addresses (by default the machine itself, where a Prometheus agent usually runs).

Behind a front end (nginx) without ``trusted_proxy`` every request comes from the front
end's address, so when ``metrics_allow`` covers that address (the default covers loopback)
every client of the front end may read the metrics. The server says so in its log: at
start-up when its own options show a front end (``[files] nginx_upload_dir`` is set), and
otherwise at the first ``GET /metrics`` let in by address that carries a front end's
``X-Real-IP`` or ``X-Forwarded-For``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from concurrent.futures import ThreadPoolExecutor

import tornado.web

from iceprod_server import metrics
from iceprod_server.config import Config
from iceprod_server.db import reads
from iceprod_server.errors import IceProdError
from iceprod_server.handlers.base import BaseHandler
from iceprod_server.services import Services

log = logging.getLogger(__name__)

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
FORWARDED_HEADERS = ("X-Real-IP", "X-Forwarded-For")
_passed_on_warned = False


def allowed_address(address: str, networks: tuple[str, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)


def front_end_exposure(config: Config) -> str | None:
    """The start-up warning, when the options show a front end on this machine (nginx's
    upload directory is set), no ``trusted_proxy`` and a ``metrics_allow`` that covers
    loopback: every client of the front end would then be let in."""
    if config.trusted_proxy or not config.files_nginx_upload_dir:
        return None
    covered = [n for n in config.metrics_allow
               if any(_overlaps(ipaddress.ip_network(n, strict=False), lo) for lo in LOOPBACK)]
    if not covered:
        return None
    return (f"metrics_allow covers loopback ({', '.join(covered)}) and trusted_proxy is not "
            "set, while [files] nginx_upload_dir says nginx is in front: every client that "
            "nginx passes on comes from its loopback address and may read /metrics. Set "
            "trusted_proxy to nginx's address (\"127.0.0.1\"), or take loopback out of "
            "metrics_allow")


def _overlaps(a: ipaddress.IPv4Network | ipaddress.IPv6Network,
              b: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    return a.version == b.version and a.overlaps(b)


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
        elif not self.services.config.trusted_proxy:
            self.warn_if_passed_on()
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

    def warn_if_passed_on(self) -> None:
        """Once per process: a request let in by its address that a front end passed on,
        with no trusted_proxy to take the client's address from."""
        global _passed_on_warned
        header = next((h for h in FORWARDED_HEADERS if h in self.request.headers), None)
        if header is None or _passed_on_warned:
            return
        _passed_on_warned = True
        log.warning("GET /metrics from %s was let in by metrics_allow, but a front end passed "
                    "it on (it carries %s) and trusted_proxy is not set: every client of the "
                    "front end comes from %s and may read /metrics. Set trusted_proxy to the "
                    "front end's address", self.remote_ip(), header, self.remote_ip())

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
