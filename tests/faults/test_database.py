"""The database frozen and cut, through a TCP proxy the test controls (MariaDB), and a
statement that runs too long.

While the database does not answer (frozen: connections open, no byte moves; or cut:
connections closed and refused), every call gets -32005 within ``db_timeout`` and
``/healthz`` answers 503 within 2 seconds. When the database is back the same server
process serves again by itself, and nothing acknowledged before the fault is lost.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from iceprod_server.client import IceProdClient, RPCError
from iceprod_server.rpc.context import Context
from iceprod_server.rpc.registry import ANYONE
from tests.support import databases
from tests.support.datasets import claim_one, config, submit, task, wait_counts, wait_until
from tests.support.inprocess import extra_method, in_process_server
from tests.support.servers import Deployment, ServerProcess, http_get
from tests.support.tcpproxy import TCPProxy

DB_TIMEOUT = 3.0
# what a loaded two-core machine may add to the bounds before the answer arrives
SLACK = 1.5


@pytest.fixture
def proxied_url() -> Iterator[tuple[str, TCPProxy]]:
    with databases.mariadb_database() as url:
        proxy = TCPProxy(databases.MARIADB_HOST, databases.MARIADB_PORT)
        try:
            yield url.replace(f":{databases.MARIADB_PORT}/", f":{proxy.port}/"), proxy
        finally:
            proxy.close()


def timed_error(fn: Any, *args: Any, **kwargs: Any) -> tuple[int, float]:
    started = time.monotonic()
    try:
        result = fn(*args, **kwargs)
    except RPCError as e:
        return e.code, time.monotonic() - started
    pytest.fail(f"expected an error, got {result!r}")


def health(srv: ServerProcess) -> tuple[int, float]:
    started = time.monotonic()
    status, body = http_get(srv.port, "/healthz", timeout=10)
    took = time.monotonic() - started
    if status == 503:  # the answer names what is wrong
        assert json.loads(body)["database"] == "unreachable", body
    return status, took


def check_unavailable(srv: ServerProcess, pilot_key: str, task_id: str) -> None:
    public = srv.client(retries=0, timeout=30)
    pilot = srv.client(pilot_key, pilot_ref="p1", retries=0, timeout=30)
    for _ in range(2):
        status, took = health(srv)
        assert status == 503 and took < 2.0 + SLACK, (status, took)
        code, took = timed_error(public.call, "public_get_datasets_by_status")
        assert code == -32005 and took < DB_TIMEOUT + SLACK, (code, took)
        code, took = timed_error(pilot.call, "stillrunning", task_id=task_id)
        assert code == -32005 and took < DB_TIMEOUT + SLACK, (code, took)


def wait_healthy(srv: ServerProcess) -> None:
    wait_until("healthz 200 again", lambda: health(srv)[0] == 200 or None, timeout=30)


@pytest.mark.parametrize("fault", ["freeze", "cut"])
def test_database_fault_and_recovery(server: Any, proxied_url: tuple[str, TCPProxy],
                                     fault: str) -> None:
    url, proxy = proxied_url
    srv: ServerProcess = server(url, env={"ICEPROD_DB_TIMEOUT": str(DB_TIMEOUT),
                                          "ICEPROD_AUTH_CACHE_SECONDS": "0.1"})
    user = srv.client(srv.deployment.passkey("user", "alice"))
    pilot_key = srv.deployment.passkey("pilot")
    dataset_id = submit(user, config(task("a")), njobs=2)
    wait_counts(srv.client(), dataset_id, {"queued": 2})
    pilot = srv.client(pilot_key, pilot_ref="p1", retries=0)
    first = claim_one(pilot)["options"]["task_id"]
    pilot.call("finish_task", task_id=first, stats={"time_used": 1.0})
    second = claim_one(pilot)["options"]["task_id"]

    getattr(proxy, fault)()
    check_unavailable(srv, pilot_key, second)
    proxy.forward()
    wait_healthy(srv)

    # the same process serves again, and what was acknowledged is there
    assert pilot.call("stillrunning", task_id=second) is True
    pilot.call("finish_task", task_id=second, stats={"time_used": 2.0})
    wait_counts(srv.client(), dataset_id, {"complete": 2})
    assert srv.alive()
    rows = databases.scalar(srv.db_url.replace(f":{proxy.port}/",
                                               f":{databases.MARIADB_PORT}/"),
                            "SELECT COUNT(*) FROM task_stats")
    assert rows == 2


def _sleep(s: Session, seconds: float) -> object:
    return s.execute(text("SELECT SLEEP(:t)"), {"t": seconds}).scalar()


async def test_long_statement(ctx: Context) -> object:
    """A unit of work whose statement runs 20 s (registered for this test only)."""
    return await ctx.services.db.read(_sleep, 20)


async def test_short_statement(ctx: Context) -> object:
    return await ctx.services.db.read(_sleep, 0)


test_long_statement.__test__ = False  # type: ignore[attr-defined]  # not a test itself
test_short_statement.__test__ = False  # type: ignore[attr-defined]


def test_a_statement_longer_than_db_timeout_is_stopped(tmp_path: Any) -> None:
    """With one database thread: the long statement's caller gets -32005 within
    db_timeout, and the server stops the statement (max_statement_time), so the thread is
    free for the next call long before the statement's 20 s."""
    with databases.mariadb_database() as url:
        dep = Deployment.init(tmp_path / "data", url)
        with extra_method("test_long_statement", test_long_statement, ANYONE), \
                extra_method("test_short_statement", test_short_statement, ANYONE), \
                in_process_server(dep.data_dir, {"db_timeout": DB_TIMEOUT, "db_threads": 1},
                                  scheduler=False) as srv:
            rpc = IceProdClient(srv.url, retries=0, timeout=30)
            code, took = timed_error(rpc.call, "test_long_statement")
            assert code == -32005 and took < DB_TIMEOUT + SLACK, (code, took)
            started = time.monotonic()
            assert rpc.call("test_short_statement") == 0
            took = time.monotonic() - started
            assert took < DB_TIMEOUT + SLACK, f"the next call waited {took:.1f} s"


def test_connections_dropped_while_idle_are_replaced_unseen(server: Any) -> None:
    """MariaDB closes connections it considers idle (``wait_timeout``, a restart, a
    firewall): the next calls after a quiet spell must not fail because of it."""
    with databases.mariadb_database() as url:
        srv: ServerProcess = server(url)
        user = srv.client(srv.deployment.passkey("user", "alice"), retries=0)
        dataset_id = submit(user, config(task("a")), njobs=3)
        wait_counts(srv.client(), dataset_id, {"queued": 3})
        name = url.rsplit("/", 1)[1]
        for _ in range(2):
            time.sleep(1.5)  # quiet: every pooled connection is idle
            ids = [row[0] for row in databases.query(
                url, "SELECT id FROM information_schema.processlist WHERE db = :db "
                     "AND id <> CONNECTION_ID()", db=name)]
            assert ids, "the server holds no connection to its database"
            with databases.connect(url) as conn:
                for conn_id in ids:
                    conn.execute(text(f"KILL CONNECTION {int(conn_id)}"))
            # each call right after the kill: no -32005, the same answers as before
            counts = srv.client(retries=0).call(
                "public_get_number_of_tasks_in_each_state", dataset_id=dataset_id)
            assert counts == {"queued": 3}
            assert user.call("public_get_dataset",
                             dataset_id=dataset_id)["status"] == "processing"


def test_unavailable_answers_keep_the_drivers_words_in_the_log(
        server: Any, proxied_url: tuple[str, TCPProxy]) -> None:
    """An anonymous caller learns what happened and what to do; what the driver said
    (hosts, ports, users) is in the server's log under the request's id."""
    url, proxy = proxied_url
    # the scheduler passes once, at the start, and then leaves the database to this call
    srv: ServerProcess = server(url, env={"ICEPROD_DB_TIMEOUT": str(DB_TIMEOUT),
                                          "ICEPROD_SCHEDULER_INTERVAL": "600"})
    wait_until("the scheduler's first pass", lambda: json.loads(
        http_get(srv.port, "/healthz")[1]).get("scheduler_passes", 0) >= 1)
    proxy.close()  # nothing listens there any more: the driver names the host it tried
    with pytest.raises(RPCError) as e:
        IceProdClient(srv.url, retries=0, timeout=30).call("public_get_datasets_by_status")
    assert e.value.code == -32005
    data = e.value.data
    assert set(data) == {"reason", "request_id"}, data
    assert "nothing was changed" in data["reason"] and "try again" in data["reason"], data
    logged = [line for line in srv.log_text().splitlines() if data["request_id"] in line]
    said = [line for line in logged if "database unavailable: (" in line]
    assert said, logged
    driver = said[0].split("database unavailable: ", 1)[1].rsplit(" [request", 1)[0]
    answer = json.dumps(data)
    assert driver not in answer and "127.0.0.1" not in answer
    assert str(proxy.port) not in answer and "root" not in answer
