"""``GET /healthz``: 200 once the server is ready and its database answers, 503 when it does
not, within :data:`HEALTH_SECONDS` whatever the database does.

The answer also counts the scheduler passes this process has finished
(``scheduler_passes``), so an operator or a test can see the scheduler is alive and wait
for a pass that began after some moment."""

from __future__ import annotations

from iceprod_server.handlers.base import BaseHandler

HEALTH_SECONDS = 2.0


class HealthHandler(BaseHandler):
    async def prepare(self) -> None:
        pass  # no login session: the check must not wait on the database for it

    async def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        # a little under the bound, for the time the answer itself takes
        if not await self.services.db.ping(HEALTH_SECONDS - 0.2):
            self.set_status(503)
            self.finish({"status": "unavailable", "database": "unreachable"})
            return
        answer: dict[str, object] = {"status": "ok"}
        if self.services.scheduler_passes is not None:
            answer["scheduler_passes"] = self.services.scheduler_passes()
        self.finish(answer)


def routes() -> list[tuple[str, type]]:
    return [(r"/healthz", HealthHandler)]
