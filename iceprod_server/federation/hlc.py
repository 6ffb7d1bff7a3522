"""A hybrid logical clock: versions that follow wall time and still keep causal order.

A version is ``WWWWWWWWWWWWW.CCCCCC.SITE``: milliseconds of wall time, a counter and the
site id, fixed-width so that versions compare as strings. A clock never goes backwards, and
after it has seen a version from another site every version it makes is newer, however far
apart the two wall clocks are (Kulkarni et al., "Logical Physical Clocks", 2014).

The counter never outgrows its six digits: a tick past 999999 carries into the wall time
(one millisecond later, counter 0), so every version this clock makes parses and sorts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

_WALL_DIGITS = 13
_COUNTER_DIGITS = 6
MAX_COUNTER = 10**_COUNTER_DIGITS - 1


def encode(wall_ms: int, counter: int, site: str) -> str:
    if not 0 <= counter <= MAX_COUNTER:
        raise ValueError(f"a version's counter is 0..{MAX_COUNTER}, got {counter}")
    return f"{wall_ms:0{_WALL_DIGITS}d}.{counter:0{_COUNTER_DIGITS}d}.{site}"


def parse(version: str) -> tuple[int, int, str]:
    """``(wall_ms, counter, site)``; ValueError for anything that is not a version."""
    if not isinstance(version, str) or len(version) > 64:
        raise ValueError("a version is a string of at most 64 characters")
    wall, sep1, rest = version.partition(".")
    counter, sep2, site = rest.partition(".")
    if (not sep1 or not sep2 or len(wall) != _WALL_DIGITS or not wall.isdigit()
            or len(counter) != _COUNTER_DIGITS or not counter.isdigit() or not site):
        raise ValueError(f"not a version (WALL_MS.COUNTER.SITE): {version!r}")
    return int(wall), int(counter), site


def wall_seconds(version: str) -> float:
    return parse(version)[0] / 1000.0


def wall_clock(offset: float = 0.0) -> Callable[[], float]:
    """The physical clock of a server: ``time.time()`` plus ``offset`` seconds (the
    ``debug_clock_offset`` option, which only tests and diagnosis set)."""
    if not offset:
        return time.time
    return lambda: time.time() + offset


class HybridClock:
    """Thread-safe; ``now`` is the physical clock (seconds), replaceable for tests."""

    def __init__(self, site: str, now: Callable[[], float] = time.time) -> None:
        self.site = site
        self._now = now
        self._wall = 0
        self._counter = 0
        self._lock = threading.Lock()

    def _physical(self) -> int:
        return int(self._now() * 1000)

    def tick(self) -> str:
        """A version for a change made here, newer than any this clock made or saw."""
        with self._lock:
            pt = self._physical()
            if pt > self._wall:
                self._wall, self._counter = pt, 0
            elif self._counter < MAX_COUNTER:
                self._counter += 1
            else:
                self._wall, self._counter = self._wall + 1, 0
            return encode(self._wall, self._counter, self.site)

    def observe(self, version: str) -> None:
        """Take in a version made elsewhere (or saved before a restart)."""
        wall, counter, _ = parse(version)
        with self._lock:
            if (wall, counter) > (self._wall, self._counter):
                self._wall, self._counter = wall, counter

    def rebase(self, floor: str | None = None) -> None:
        """Start again from the physical clock, or from ``floor`` if that is later: the one
        way this clock goes back, for a site whose versions ran ahead of what its master
        accepts (the caller makes every unsent change new again)."""
        wall, counter = (self._physical(), 0) if floor is None else max(
            (self._physical(), 0), parse(floor)[:2])
        with self._lock:
            self._wall, self._counter = wall, counter

    @property
    def last(self) -> str:
        with self._lock:
            return encode(self._wall, self._counter, self.site)

    def wall(self) -> float:
        """The physical clock this clock follows (seconds)."""
        return self._now()
