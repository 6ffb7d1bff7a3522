"""The scheduler: a periodic coroutine that keeps the queue fed.

Each pass expires leases and stale queue entries, returns reset and resumed tasks to idle,
materialises jobs lazily, releases idle tasks whose dependencies are complete, queues waiting
tasks by priority, and derives job and dataset status; at the end of each ``graph_interval``
it records the points of ``public_get_graphs``. Every step is a set-based unit of work
on the ``db`` pool and safe to run from several server processes at once. Passes run every
``scheduler_interval`` seconds and early when woken by a submission or a completion, but
no sooner than :data:`MIN_GAP` seconds after the previous pass began: under a stream of
completions the passes then come a few times a second instead of back to back.

Job and dataset status are derived from the tasks whose status changed since the last
pass. A change can become visible some time after its timestamp (the transaction that
made it was still running), so every :data:`SWEEP_EVERY` seconds a pass looks
:data:`SWEEP_LOOKBACK` seconds further back than the previous sweep; the passes between
look back :data:`SHORT_LOOKBACK` seconds. Changes already derived (the same task with the
same timestamp) are not derived again.
"""

from __future__ import annotations

import asyncio
import logging
import time

from iceprod_server import metrics
from iceprod_server.db import graphs, request_keys, scheduling
from iceprod_server.db.tasks import Backoff
from iceprod_server.errors import OutcomeUnknown, Unavailable
from iceprod_server.services import Services

log = logging.getLogger(__name__)

BATCH = 5000
# a woken scheduler waits this long so that a burst of completions makes one pass
DEBOUNCE = 0.05
# and a woken pass starts at least this long after the previous one started
MIN_GAP = 0.25
# how far back each pass looks for task changes, and how often (and how far back) a sweep
# looks for changes that became visible late
SHORT_LOOKBACK = 2.0
SWEEP_EVERY = 10.0
SWEEP_LOOKBACK = 10.0
# how far back a new process looks for task changes whose job status it should derive
LOOKBACK = 3600.0


class Scheduler:
    def __init__(self, services: Services) -> None:
        self.services = services
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._cursor: scheduling.Cursor = (time.time() - LOOKBACK, "")
        self._sweep_cursor: scheduling.Cursor = self._cursor
        self._next_sweep = 0.0  # monotonic
        # task changes derived already: task id -> status_changed
        self._derived: dict[str, float] = {}
        self.passes = 0
        self._stopping = False
        # monotonic times: when it started, and when a pass last ended well
        self._started = time.monotonic()
        self._last_pass: float | None = None
        # the end of the last graph interval recorded (public_get_graphs), epoch seconds
        self._graphed = 0

    def start(self) -> None:
        self._started = time.monotonic()
        self._task = asyncio.create_task(self._loop(), name="scheduler")

    def age(self) -> float:
        """Seconds since a pass last ended well (since the start, before the first)."""
        return time.monotonic() - (self._last_pass or self._started)

    def wake(self) -> None:
        self._wake.set()

    async def stop(self, grace: float = 0.0) -> None:
        """Stop after the step under way (waiting up to ``grace`` seconds for it), so no
        step is cut off between its units of work; cancel it after that."""
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace)
        except TimeoutError:
            self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None

    async def _loop(self) -> None:
        while not self._stopping:
            began = time.monotonic()
            started = time.perf_counter()
            try:
                summary = await self.run_once()
                metrics.SCHEDULER_PASS_SECONDS.observe(time.perf_counter() - started)
                metrics.SCHEDULER_LAST_PASS.set(time.time())
                self._last_pass = time.monotonic()
                if any(summary.values()):
                    log.info("scheduler pass: %s",
                             ", ".join(f"{k}={v}" for k, v in summary.items() if v))
            except (Unavailable, OutcomeUnknown) as e:
                # every step is safe to run again: the next pass does
                log.warning("scheduler pass skipped: %s", e.reason)
            except Exception:
                log.exception("scheduler pass failed")
            try:
                await asyncio.wait_for(self._wake.wait(),
                                       self.services.config.scheduler_interval)
                await asyncio.sleep(max(DEBOUNCE, began + MIN_GAP - time.monotonic()))
            except TimeoutError:
                pass
            self._wake.clear()

    async def run_once(self) -> dict[str, int]:
        """One full pass; returns how many rows each step changed."""
        db = self.services.db
        c = self.services.config  # read each pass: SIGHUP may have changed it
        now = time.time()
        pass_start = now
        out = {
            "expired": await db.write(scheduling.expire_leases, now, c.max_resets, BATCH,
                                      Backoff(c.retry_delay_seconds,
                                              c.retry_max_delay_seconds)),
            "timed_out": await db.write(scheduling.expire_queued, now, c.queue_timeout,
                                        BATCH),
            "to_idle": await db.write(scheduling.return_to_idle, BATCH, now),
            "jobs": await db.write(scheduling.materialize_jobs, c.materialize_batch,
                                   c.queue_depth),
            "waiting": 0,
        }
        for _ in range(10):
            n = await db.write(scheduling.release_ready, BATCH)
            out["waiting"] += n
            if n < BATCH:
                break
        out["queued"] = await db.write(scheduling.queue_waiting, c.queue_depth)
        out["jobs_status"], out["datasets_status"] = await self._derive_status(pass_start)
        if c.graph_interval > 0:
            step = c.graph_interval
            at = graphs.boundary(now, step)
            if at > self._graphed:
                first = max(self._graphed + step, at - (graphs.CATCH_UP - 1) * step)
                await db.write(graphs.record, list(range(first, at + 1, step)), step)
                self._graphed = at
        self.passes += 1
        return out

    async def _derive_status(self, pass_start: float) -> tuple[int, int]:
        sweep = time.monotonic() >= self._next_sweep
        cursor: scheduling.Cursor | None = self._sweep_cursor if sweep else self._cursor
        jobs = datasets = 0
        for _ in range(10):
            assert cursor is not None
            jobs_n, ds_n, cursor, done = await self.services.db.write(
                scheduling.derive_status, cursor, self._derived)
            self._derived.update(done)  # once committed
            jobs += jobs_n
            datasets += ds_n
            if cursor is None:
                break
        if cursor is None:
            # changes made by other processes during this pass are seen next time
            self._cursor = (pass_start - SHORT_LOOKBACK, "")
            if sweep:
                self._sweep_cursor = (pass_start - SWEEP_LOOKBACK, "")
                self._next_sweep = time.monotonic() + SWEEP_EVERY
        else:
            self._cursor = cursor  # more next pass
            if sweep:
                self._sweep_cursor = cursor
        if sweep:
            oldest = min(self._cursor[0], self._sweep_cursor[0])
            self._derived = {t: ts for t, ts in self._derived.items() if ts >= oldest}
            await self.services.db.write(
                request_keys.forget, time.time() - self.services.config.request_key_seconds)
        return jobs, datasets
