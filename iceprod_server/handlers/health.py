"""``GET /healthz``: whether this server process can do its work, for nginx, systemd and
Kubernetes probes; answered within :data:`HEALTH_SECONDS` whatever the database does.

200 ``{"status": "ok", "database": "ok", "scheduler_age_s": S, "scheduler_passes": N}``
(on SQLite with ``"writer": "ok"``); 503 with ``"status": "unavailable"`` and what is
wrong: ``"database": "unreachable"`` when a new connection cannot read in time, ``"writer":
"not answering"`` (SQLite) when the process's writer thread does not answer a unit of its
own in time (stuck in a long unit, or waiting for the write lock another process holds),
and ``"scheduler": "stalled"`` when no scheduler pass has ended well for
:func:`stall_limit` seconds. ``scheduler_age_s`` is the time since the last pass ended well;
``scheduler_passes`` counts them, so a test can wait for a pass that began after some
moment. A failing database probe makes the server answer -32005 at once until a probe
passes (:mod:`iceprod_server.executors.gate`).
"""

from __future__ import annotations

from typing import Any

from iceprod_server.config import Config
from iceprod_server.handlers.base import BaseHandler

HEALTH_SECONDS = 2.0


def stall_limit(config: Config) -> float:
    """Seconds without a good pass after which the scheduler counts as stalled:
    ``scheduler_stall_seconds``, or by default ten intervals and never less than a minute
    (a pass over a large queue takes a while)."""
    return config.scheduler_stall_seconds or max(60.0, 10 * config.scheduler_interval)


class HealthHandler(BaseHandler):
    async def prepare(self) -> None:
        pass  # no login session: the check must not wait on the database for it

    async def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        services = self.services
        answer: dict[str, Any] = {"status": "ok"}
        # a little under the bound, for the time the answer itself takes
        database = await services.db.health(HEALTH_SECONDS - 0.2)
        answer.update(database)
        if any(v != "ok" for v in database.values()):
            answer["status"] = "unavailable"
        if services.scheduler_age is not None:
            age = services.scheduler_age()
            answer["scheduler_age_s"] = round(age, 3)
            if age > stall_limit(services.config):
                answer.update(status="unavailable", scheduler="stalled")
        if services.scheduler_passes is not None:
            answer["scheduler_passes"] = services.scheduler_passes()
        if answer["status"] != "ok":
            self.set_status(503)
        self.finish(answer)


def routes() -> list[tuple[str, type]]:
    return [(r"/healthz", HealthHandler)]
