"""``serve --processes N``: N worker processes on one listening socket (pre-fork).

The parent binds the socket, forks the workers and then only watches them: each worker
makes its own event loop, thread pools and database connections after the fork (nothing of
the kind exists in the parent), and runs :func:`iceprod_server.server.serve` on the shared
socket; the kernel spreads new connections among them. A worker that dies is logged and
replaced. SIGTERM and SIGINT are passed on to every worker, which stops gracefully; the
parent exits 0 once all have. SIGHUP is passed on too (each worker re-reads its options).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Callable

import tornado.netutil

from iceprod_server import metrics
from iceprod_server.config import Config

log = logging.getLogger(__name__)

# a worker that dies sooner than this after its start is restarted only after a pause,
# so a worker that cannot start does not fork in a tight loop
QUICK_DEATH = 5.0
RESTART_PAUSE = 2.0
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _run_worker(config: Config, sockets: list[socket.socket],
                reload: Callable[[], Config] | None, index: int) -> int:
    from iceprod_server import server

    for sig in FORWARDED:
        signal.signal(sig, signal.SIG_DFL)
    os.environ["ICEPROD_WORKER"] = str(index)
    try:
        asyncio.run(server.serve(config, sockets=sockets, reload=reload))
    except BaseException:
        log.exception("worker %d failed", index)
        return 1
    return 0


class Supervisor:
    def __init__(self, config: Config, processes: int,
                 reload: Callable[[], Config] | None = None) -> None:
        self.config = config
        self.processes = processes
        self.reload = reload
        self.workers: dict[int, tuple[int, float]] = {}  # pid -> (index, started)
        self.stopping = False

    def _spawn(self, index: int, sockets: list[socket.socket]) -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _run_worker(self.config, sockets, self.reload, index)
            finally:
                logging.shutdown()
                os._exit(code)
        self.workers[pid] = (index, time.monotonic())
        log.info("worker %d started (pid %d)", index, pid)

    def _forward(self, sig: int, _frame: object) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT) and not self.stopping:
            self.stopping = True
            log.info("stopping %d workers", len(self.workers))
        for pid in list(self.workers):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; returns the exit code."""
        sockets = tornado.netutil.bind_sockets(self.config.port, address=self.config.host)
        for sig in FORWARDED:
            signal.signal(sig, self._forward)
        log.info("IceProd server: %d worker processes on http://%s:%d", self.processes,
                 self.config.host, self.config.port)
        for index in range(self.processes):
            self._spawn(index, sockets)
        while self.workers:
            pid, status = os.waitpid(-1, 0)
            if pid not in self.workers:
                continue
            index, started = self.workers.pop(pid)
            metrics.worker_gone(pid)
            code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                log.info("worker %d (pid %d) stopped with %d", index, pid, code)
                continue
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"
            log.error("worker %d (pid %d) exited with %s; starting a new one", index, pid, how)
            if time.monotonic() - started < QUICK_DEATH:
                time.sleep(RESTART_PAUSE)
            if not self.stopping:
                self._spawn(index, sockets)
        for sock in sockets:
            sock.close()
        return 0
