"""Failing fast while the database is known to be away, on both databases.

MariaDB is frozen by the TCP proxy (connections open, no byte moves); SQLite by another
process holding the write lock. The first call waits its ``db_timeout`` and gets -32005;
after it every call gets -32005 at once, so a frozen database no longer ties up a thread
and a caller for ``db_timeout`` each, and ``/healthz`` says 503. Once the database is
back, calls succeed within 2 s, and nothing answered -32005 was committed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from iceprod_server.client import IceProdClient, RPCError
from tests.support import databases
from tests.support.datasets import config, task
from tests.support.servers import ServerProcess, http_get
from tests.support.tcpproxy import TCPProxy

DB_TIMEOUT = 3.0
# what a loaded two-core machine may add to a bound before the answer arrives
SLACK = 1.5


class Away:
    """Makes the database stop answering the server, and come back."""

    def __init__(self, url: str, proxy: TCPProxy | None) -> None:
        self.url = url
        self.proxy = proxy
        self._lock: databases.SQLiteWriteLock | None = None

    def freeze(self) -> None:
        if self.proxy is not None:
            self.proxy.freeze()
        else:
            self._lock = databases.SQLiteWriteLock(self.url).__enter__()

    def back(self) -> None:
        if self.proxy is not None:
            self.proxy.forward()
        elif self._lock is not None:
            self._lock.release()


@pytest.fixture
def away(db_url: str) -> Iterator[Away]:
    proxy = None
    url = db_url
    if databases.backend_of(db_url) == "mariadb":
        proxy = TCPProxy(databases.MARIADB_HOST, databases.MARIADB_PORT)
        url = db_url.replace(f":{databases.MARIADB_PORT}/", f":{proxy.port}/")
    a = Away(url, proxy)
    try:
        yield a
    finally:
        a.back()
        if proxy is not None:
            proxy.close()


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """(the result, or the RPCError's code; seconds taken)."""
    started = time.monotonic()
    try:
        result = fn(*args, **kwargs)
    except RPCError as e:
        result = e.code
    return result, time.monotonic() - started


def test_a_frozen_database_is_answered_at_once_after_the_first_timeout(
        server: Any, away: Away) -> None:
    srv: ServerProcess = server(away.url, env={"ICEPROD_DB_TIMEOUT": str(DB_TIMEOUT)})
    user = IceProdClient(srv.url, passkey=srv.deployment.passkey("user", "alice"),
                         retries=0, timeout=30)

    def submit() -> tuple[Any, float]:
        return timed(user.call, "submit_dataset", config=config(task("a")))

    before, _ = submit()
    assert isinstance(before, str), before

    away.freeze()
    code, took = submit()
    assert code == -32005 and took < DB_TIMEOUT + SLACK, (code, took)
    for _ in range(5):
        code, took = submit()
        assert code == -32005 and took < 0.1, (code, took)
    status, body = http_get(srv.port, "/healthz", timeout=10)
    assert status == 503, body

    away.back()
    back = time.monotonic()
    while True:
        result, _ = submit()
        if isinstance(result, str):
            break
        assert result == -32005, result
        assert time.monotonic() - back < 2.0, "no call succeeded within 2 s of the return"
        time.sleep(0.05)
    # what was answered -32005 left nothing behind: the submission before and the last
    page = srv.client().call("public_get_datasets", limit=1000)
    assert sorted(d["dataset_id"] for d in page["items"]) == sorted([before, result])
