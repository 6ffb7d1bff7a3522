"""``GET /healthz``: 200 once the server is ready and its database answers.

The answer also counts the scheduler passes this process has finished
(``scheduler_passes``), so an operator or a test can see the scheduler is alive and wait
for a pass that began after some moment."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

from iceprod_server.errors import Unavailable
from iceprod_server.handlers.base import BaseHandler


def _ping(s: Session) -> None:
    s.execute(text("SELECT 1"))


class HealthHandler(BaseHandler):
    async def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        try:
            await self.services.db.read(_ping)
        except Unavailable:
            self.set_status(503)
            self.finish({"status": "unavailable", "database": "unreachable"})
            return
        answer: dict[str, object] = {"status": "ok"}
        if self.services.scheduler_passes is not None:
            answer["scheduler_passes"] = self.services.scheduler_passes()
        self.finish(answer)


def routes() -> list[tuple[str, type]]:
    return [(r"/healthz", HealthHandler)]
