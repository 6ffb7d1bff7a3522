"""Identifiers that are unique across processes and sites without coordination.

An id is 20 lowercase hex digits: 11 of milliseconds since the epoch, then 9 of a random
starting point that increases by one for each id made in the same millisecond. Ids therefore
sort by creation time, which keyset pagination relies on, and two processes (or sites) collide
only if they draw the same 36-bit random number in the same millisecond.
"""

from __future__ import annotations

import secrets
import threading
import time

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def new_id() -> str:
    return new_ids(1)[0]


def new_ids(count: int) -> list[str]:
    """``count`` fresh ids, in increasing order."""
    global _last_ms, _counter
    with _lock:
        ms = int(time.time() * 1000)
        if ms <= _last_ms:
            ms = _last_ms
        else:
            _counter = secrets.randbits(35)
        if _counter + count >= 1 << 36:
            ms += 1
            _counter = secrets.randbits(35)
        start = _counter
        _counter += count
        _last_ms = ms
    return [f"{ms:011x}{start + i:09x}" for i in range(count)]
