"""``serve --processes N``: N worker processes on one listening socket (pre-fork).

The parent binds the socket, forks the workers and then only watches them: each worker
makes its own event loop, thread pools and database connections after the fork (nothing of
the kind exists in the parent), and runs :func:`iceprod_server.server.serve` on the shared
socket; the kernel spreads new connections among them. A worker that dies is logged and
replaced. On SIGTERM or SIGINT the parent closes its copy of the listening socket, then
passes the signal on to every worker, which closes its own copy and stops gracefully; the
parent exits 0 once all have. SIGHUP is passed on too (each worker re-reads its options).

While any process holds the socket open the kernel goes on accepting connections into its
queue; with nobody left to take them from it they would wait there, and be reset when the
last worker exits. Closed everywhere, the port refuses them at once (nginx tries another
server).
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
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)  # blocked by the parent's fork
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
        self.sockets: list[socket.socket] = []

    def _spawn_unless_stopping(self, index: int, sockets: list[socket.socket]) -> None:
        # a stop arriving between the check and the fork would close the socket under the
        # new worker, or never reach it: it waits until the worker is known
        signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
        try:
            if not self.stopping:
                self._spawn(index, sockets)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)

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
            for sock in self.sockets:
                sock.close()
            log.info("stopping %d workers", len(self.workers))
        for pid in list(self.workers):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; returns the exit code."""
        sockets = tornado.netutil.bind_sockets(self.config.port, address=self.config.host)
        self.sockets = sockets
        for sig in FORWARDED:
            signal.signal(sig, self._forward)
        log.info("IceProd server: %d worker processes on http://%s:%d", self.processes,
                 self.config.host, self.config.port)
        for index in range(self.processes):
            self._spawn_unless_stopping(index, sockets)
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
            self._spawn_unless_stopping(index, sockets)
        for sock in sockets:
            sock.close()
        return 0
