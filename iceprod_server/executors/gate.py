"""Fail fast while the database is known to be away.

Without this, every call waits its whole ``db_timeout`` on a database that stopped
answering, even after ``/healthz`` has said so for a while: each call holds a pool thread
and its caller for 30 s. A :class:`Gate` is closed when a unit of work times out or finds
the database gone, or when a health probe fails. While it is closed, calls through it get
-32005 at once (nothing was tried, so nothing was committed), and a probe runs about once a
second, at most one at a time; the first probe that passes opens the gate again.

A probe starts as soon as the gate closes. A call that comes within :data:`ADMIT_WINDOW`
of the closing, while that first probe is in flight, waits for it a moment
(:data:`ADMIT_WAIT`): one unit that merely ran long (a statement stopped by the server)
then costs the next caller a few milliseconds, not an error, while on a database that
does not answer the call is still refused well within 100 ms. Any other call while the
gate is closed is refused without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from iceprod_server.errors import Unavailable

log = logging.getLogger(__name__)

# seconds between the starts of two probes while the gate is closed
PROBE_INTERVAL = 1.0
# seconds a call waits for the first probe after the gate closed before it is refused,
# and how long after the closing a call still waits for it
ADMIT_WAIT = 0.02
ADMIT_WINDOW = 0.2


class Gate:
    """Lets units of one kind (reads, writes) through while the database answers.

    ``probe()`` raises (or returns False) while the database cannot do that kind of work;
    it must bound its own duration. Methods run on the event loop."""

    def __init__(self, name: str, probe: Callable[[], Awaitable[bool]],
                 interval: float = PROBE_INTERVAL) -> None:
        self.name = name
        self._probe = probe
        self.interval = interval
        self.closed_since: float | None = None  # monotonic
        self.closings = 0  # times the gate closed, for the curious
        self._inflight: asyncio.Future[bool] | None = None
        self._first_probe: asyncio.Future[bool] | None = None  # the one started on closing
        self._prober: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        return self.closed_since is not None

    async def admit(self) -> None:
        """Return at once while the gate is open; while it is closed, raise -32005 unless
        the gate closed just now and its first probe passes within :data:`ADMIT_WAIT`."""
        closed_since = self.closed_since
        if closed_since is None:
            return
        inflight = self._first_probe
        if (inflight is not None and not inflight.done()
                and time.monotonic() - closed_since < ADMIT_WINDOW):
            try:
                await asyncio.wait_for(asyncio.shield(inflight), ADMIT_WAIT)
            except Exception:  # noqa: BLE001, S110 - still closed: refused below
                pass
            if self.closed_since is None:
                return
        raise Unavailable("the database is not answering; nothing was tried: try again "
                          "in a few seconds")

    def stop(self) -> None:
        """Stop probing (the server is stopping); on the event loop."""
        for task in (self._prober, self._inflight):
            if task is not None and not task.done():
                task.cancel()

    def close(self, why: str) -> None:
        if self.closed_since is None:
            self.closed_since = time.monotonic()
            self.closings += 1
            log.warning("database %s: failing fast until a probe passes (%s)", self.name, why)
            self._first_probe = self._start_probe()
        if self._prober is None or self._prober.done():
            self._prober = asyncio.ensure_future(self._probing())

    def _open(self) -> None:
        if self.closed_since is not None:
            log.warning("database %s: answering again after %.1f s", self.name,
                        time.monotonic() - self.closed_since)
            self.closed_since = None

    async def probe(self, timeout: float) -> bool:
        """Whether the database does this kind of work, waiting at most ``timeout``
        seconds for the probe in flight (or a new one). A probe that fails closes the gate,
        one that passes opens it, even after the wait here has ended."""
        inflight = self._start_probe()
        try:
            return await asyncio.wait_for(asyncio.shield(inflight), timeout)
        except TimeoutError:
            self.close(f"no answer to a probe within {timeout:g} s")
            return False
        except Exception:  # noqa: BLE001 - the probe's failure is the answer
            return False

    def _start_probe(self) -> asyncio.Future[bool]:
        """The probe in flight, or a new one: at most one at a time."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.ensure_future(self._probe())
            self._inflight.add_done_callback(self._probed)
        return self._inflight

    def _probed(self, future: asyncio.Future[bool]) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if error is None and future.result():
            self._open()
        else:
            self.close(f"probe failed: {error or 'no'}")

    async def _probing(self) -> None:
        while self.closed_since is not None:
            started = time.monotonic()
            await self.probe(self.interval)
            if self.closed_since is None:
                return
            await asyncio.sleep(max(0.0, started + self.interval - time.monotonic()))
