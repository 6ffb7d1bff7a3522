"""Runs one server process: schema check, HTTP server, scheduler, and a stop on SIGTERM
or SIGINT that closes every connection at once (requests in flight are cut, not finished)."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal

import tornado.httpserver

from iceprod_server.app import make_app
from iceprod_server.config import Config, safe_db_url
from iceprod_server.db.migrate import check_schema
from iceprod_server.scheduler import Scheduler
from iceprod_server.services import Services

log = logging.getLogger(__name__)


async def serve(config: Config, ready: asyncio.Event | None = None) -> None:
    """Serve until SIGINT or SIGTERM. Raises SchemaOutdated before listening if the
    database needs ``iceprod-server migrate``."""
    services = Services(config)
    try:
        await services.db.read(lambda s: check_schema(s.connection()))
        app = make_app(services)
        # Tornado's own cap sits above ours so the JSON-RPC handler can answer 413 itself
        # no xheaders: Tornado would take X-Real-IP from any client; the handlers trust
        # proxy headers only when the TCP peer is the configured trusted_proxy
        server = tornado.httpserver.HTTPServer(
            app,
            max_body_size=max(config.max_body_bytes + 1, 100 * 1024 * 1024))
        server.listen(config.port, address=config.host)
        scheduler = Scheduler(services)
        services.on_wake_scheduler(scheduler.wake)
        services.scheduler_passes = lambda: scheduler.passes
        scheduler.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info("IceProd server listening on http://%s:%d (database %s)", config.host,
                 config.port, safe_db_url(config.database_url))
        # objects made at start-up live as long as the process: keep them out of the
        # collector's full passes, which would otherwise pause the loop for long
        gc.collect()
        gc.freeze()
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("shutting down")
        server.stop()
        await scheduler.stop()
        await asyncio.wait_for(server.close_all_connections(), timeout=10)
    finally:
        await services.aclose()
