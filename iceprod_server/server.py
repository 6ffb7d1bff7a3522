"""Runs one server process: schema check, HTTP server, scheduler, and the graceful stop on
SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import time
from collections.abc import Callable

import tornado.httpserver

from iceprod_server.app import make_app
from iceprod_server.config import Config, safe_db_url
from iceprod_server.db import sync_master
from iceprod_server.db.migrate import check_schema
from iceprod_server.federation import link
from iceprod_server.handlers import jsonrpc
from iceprod_server.handlers import metrics as metrics_handler
from iceprod_server.httpguard import http_server
from iceprod_server.reload import reload_config
from iceprod_server.scheduler import Scheduler
from iceprod_server.services import Services

log = logging.getLogger(__name__)

# a stopping server closes its connections once no request is in flight and none began for
# this long: a proxy's idle keep-alive connections are used up by then (each request
# answered while stopping carries Connection: close), so closing them cuts no request
# that is already on its way
DRAIN_QUIET = 0.5


async def serve(config: Config, ready: asyncio.Event | None = None,
                sockets: list[socket.socket] | None = None,
                reload: Callable[[], Config] | None = None) -> None:
    """Serve until SIGINT or SIGTERM, on ``sockets`` when given (a worker of
    ``serve --processes``), else on the configured address. SIGHUP applies the options of
    ``reload()`` that can change live. Raises SchemaOutdated before listening if the
    database needs ``iceprod-server migrate``."""
    services = Services(config)
    try:
        await services.db.read(lambda s: check_schema(s.connection()))
        app = make_app(services)
        server = http_server(app, config, jsonrpc.shortcut(app))
        if sockets is None:
            server.listen(config.port, address=config.host)
        else:
            server.add_sockets(sockets)
        if not config.site_master:
            # a master (or a server on its own): leases of sites' tasks run from now
            await services.db.write(sync_master.renew_after_start, time.time(),
                                    config.site_lease_seconds)
        scheduler = Scheduler(services)
        services.on_wake_scheduler(scheduler.wake)
        services.scheduler_passes = lambda: scheduler.passes
        services.scheduler_age = scheduler.age
        scheduler.start()
        sampler = asyncio.create_task(metrics_handler.sampler(services), name="metrics sampler")
        site_link = None
        if config.site_master:
            site_link = link.SiteLink(services)
            link.current = site_link
            site_link.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if reload is not None:
            loop.add_signal_handler(signal.SIGHUP, reload_config, services, reload)
        log.info("IceProd server listening on http://%s:%d (database %s)", config.host,
                 config.port, safe_db_url(config.database_url))
        # objects made at start-up live as long as the process: keep them out of the
        # collector's full passes, which would otherwise pause the loop for long
        gc.collect()
        gc.freeze()
        if ready is not None:
            ready.set()
        await stop.wait()
        sampler.cancel()
        await _drain(config, services, server, scheduler, site_link)
    finally:
        await services.aclose()


async def _drain(config: Config, services: Services, server: tornado.httpserver.HTTPServer,
                 scheduler: Scheduler, site_link: link.SiteLink | None) -> None:
    """The graceful stop: accept nothing new, let the requests in flight finish (up to
    ``shutdown_grace`` seconds), end the scheduler after its step, then close what is
    left. Closing the pools afterwards waits for units of work already running, so no
    transaction is cut in half."""
    grace = config.shutdown_grace
    requests = services.requests
    started = time.monotonic()
    server.stop()  # before the line below: whoever reads it may count on the port closed
    log.info("stopping: no new connections; waiting up to %g s for %d requests in flight",
             grace, requests.count)
    requests.draining = True
    services.live.close()  # event streams never end by themselves; browsers reconnect
    drained, _ = await asyncio.gather(requests.wait_idle(grace, DRAIN_QUIET),
                                      scheduler.stop(grace))
    if site_link is not None:
        await site_link.stop()  # its outbox stays in the database for the next start
    if drained:
        log.info("requests in flight finished after %.1f s", time.monotonic() - started)
    else:
        log.warning("%d requests still in flight after %g s: closing their connections",
                    requests.count, grace)
    await asyncio.wait_for(server.close_all_connections(), timeout=10)

