"""The worker processes of ``serve --processes N``, as the operating system shows them.

The workers share one listening socket, and the kernel gives each new connection to
whichever worker accepts first. A test that must know which worker answers pauses the
other (SIGSTOP): a stopped process accepts nothing, so every connection made meanwhile
goes to the one still running, and stays with it while it is kept alive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def workers(parent: int) -> set[int]:
    """The pids of the processes whose parent is ``parent``."""
    out = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def state(pid: int) -> str:
    """The kernel's one-letter state of ``pid`` (``T``: stopped)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0]


@contextmanager
def paused(pid: int, timeout: float = 10.0) -> Iterator[None]:
    """``pid`` stopped for the duration of the block, and running again afterwards."""
    os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + timeout
        while state(pid) != "T":
            assert time.monotonic() < deadline, f"process {pid} did not stop"
            time.sleep(0.01)
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def wait_workers(parent: int, n: int, timeout: float = 30.0) -> set[int]:
    """Wait until ``parent`` has exactly ``n`` children; returns their pids (one look at a
    time: a dead one may be reaped between two)."""
    deadline = time.monotonic() + timeout
    while len(now := workers(parent)) != n:
        assert time.monotonic() < deadline, f"{n} workers expected, found {sorted(now)}"
        time.sleep(0.1)
    return now
