"""The server's application running inside the test process, on its own event loop thread.

For tests that must reach inside the server: register an extra JSON-RPC method for the
duration of one test, or measure the event loop's lag while real requests are served.
Everything else talks to real server processes (:mod:`tests.support.servers`).
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import tornado.httpserver

from iceprod_server import config as config_mod
from iceprod_server.app import make_app
from iceprod_server.handlers import jsonrpc
from iceprod_server.httpguard import http_server
from iceprod_server.rpc import registry
from iceprod_server.scheduler import Scheduler
from iceprod_server.services import Services
from tests.support.servers import unused_port

T = TypeVar("T")


class InProcessServer:
    """``make_app`` + ``Services`` on a loop in a background thread, with the scheduler."""

    def __init__(self, data_dir: Path, overrides: dict[str, Any] | None = None,
                 scheduler: bool = True) -> None:
        self.port = unused_port()
        self.config = config_mod.load(data_dir, {"port": self.port,
                                                 "cookie_secret": secrets.token_urlsafe(32),
                                                 **(overrides or {})}, environ={})
        self.with_scheduler = scheduler
        self.loop = asyncio.new_event_loop()
        self.services: Services | None = None
        self._http: tornado.httpserver.HTTPServer | None = None
        self._scheduler: Scheduler | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, name="server-loop",
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def run(self, coro: Awaitable[T], timeout: float = 60.0) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(_wrap(coro), self.loop)
        return future.result(timeout)

    def start(self) -> None:
        self._thread.start()
        self.run(self._start())

    async def _start(self) -> None:
        self.services = Services(self.config)
        app = make_app(self.services)
        # the server as `serve` makes it: the header guard and the JSON-RPC fast path
        self._http = http_server(app, self.config, jsonrpc.shortcut(app))
        self._http.listen(self.port, address="127.0.0.1")
        if self.with_scheduler:
            self._scheduler = Scheduler(self.services)
            self.services.on_wake_scheduler(self._scheduler.wake)
            self._scheduler.start()

    async def _stop(self) -> None:
        if self._scheduler is not None:
            await self._scheduler.stop()
        if self._http is not None:
            self._http.stop()
            await self._http.close_all_connections()
        if self.services is not None:
            # the GridFTP client and the database probes belong to this loop: close them
            # while the loop runs
            await self.services.close_gsiftp()
            self.services.db.stop_probing()

    def stop(self) -> None:
        try:
            self.run(self._stop(), timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=30)
            if self.services is not None:
                self.services.close()
            self.loop.close()


async def _wrap(coro: Awaitable[T]) -> T:
    return await coro


@contextmanager
def in_process_server(data_dir: Path, overrides: dict[str, Any] | None = None,
                      scheduler: bool = True) -> Iterator[InProcessServer]:
    server = InProcessServer(data_dir, overrides, scheduler)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def extra_method(name: str, func: Callable[..., Awaitable[Any]],
                 *roles: str) -> Iterator[None]:
    """Register ``func`` as JSON-RPC method ``name`` in this process, for one test only."""
    from iceprod_server.rpc import methods

    methods.load()  # the real methods first, so that ours cannot shadow one of them
    assert name not in registry.REGISTRY, f"{name} is a real method"
    registry.rpc_method(*(roles or (registry.ANYONE,)), name=name)(func)
    try:
        yield
    finally:
        registry.REGISTRY.pop(name, None)
