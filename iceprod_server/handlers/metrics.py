"""``GET /metrics``: the Prometheus text format, for admins and the ``metrics_allow``
addresses (by default the machine itself, where a Prometheus agent usually runs)."""

from __future__ import annotations

import ipaddress

import tornado.web

from iceprod_server import metrics
from iceprod_server.db import reads
from iceprod_server.errors import IceProdError
from iceprod_server.handlers.base import BaseHandler


def allowed_address(address: str, networks: tuple[str, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)


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
        metrics.sample(self.services)
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
