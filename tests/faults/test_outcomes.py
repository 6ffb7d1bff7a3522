"""What -32005 and -32006 promise, against real faults on both databases.

- A unit frozen past ``db_timeout`` that then commits: on MariaDB its COMMIT is held by
  the TCP proxy (``support/tcpproxy.py``) and sent on after the caller's time ran out;
  on SQLite another process holds the write lock past ``db_timeout``.
- A connection cut during COMMIT (MariaDB, the TCP proxy): the transaction committed and
  the server never heard.

In each, the client library repeats the call as it would for any user, and the outcome
is what the user asked for once: one dataset, the tasks the pilot was handed and no
others left claimed. The raw answers say which case it was: -32006 when the server cannot
know (a COMMIT frozen or cut), -32005 when nothing was committed (a unit that never
reached its COMMIT rolls back once its caller stopped waiting).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from iceprod_server.client import IceProdClient, RPCError
from tests.support import databases
from tests.support.datasets import config, offer, submit, task, wait_counts
from tests.support.servers import ServerProcess
from tests.support.tcpproxy import TCPProxy

DB_TIMEOUT = 3.0
# what a loaded two-core machine may add to a bound before the answer arrives
SLACK = 1.5
ENV = {"ICEPROD_DB_TIMEOUT": str(DB_TIMEOUT)}
# statements of the transactions the faults aim at (MariaDB)
SUBMISSION = b"INSERT INTO datasets"
CLAIM = b"UPDATE tasks SET prev_claimant"


class Fault:
    """A database whose next unit of the kind aimed at freezes past ``db_timeout``:
    on MariaDB in its COMMIT, on SQLite before it (the write lock is held elsewhere)."""

    def __init__(self, url: str, proxy: TCPProxy | None) -> None:
        self.url = url  # what the server is given (through the proxy on MariaDB)
        self.proxy = proxy
        self._lock: databases.SQLiteWriteLock | None = None

    @property
    def mariadb(self) -> bool:
        return self.proxy is not None

    def freeze(self, statement: bytes) -> None:
        if self.proxy is not None:
            self.proxy.on_commit("freeze", after=statement)
        else:
            self._lock = databases.SQLiteWriteLock(self.url).__enter__()

    def wait_frozen(self) -> None:
        if self.proxy is not None:
            assert self.proxy.commit_caught.wait(30), "the COMMIT never came"

    def release(self) -> None:
        if self.proxy is not None:
            self.proxy.forward()
        elif self._lock is not None:
            self._lock.release()

    def close(self) -> None:
        self.release()
        if self.proxy is not None:
            self.proxy.close()


@pytest.fixture
def fault(db_url: str) -> Iterator[Fault]:
    proxy = None
    url = db_url
    if databases.backend_of(db_url) == "mariadb":
        proxy = TCPProxy(databases.MARIADB_HOST, databases.MARIADB_PORT)
        url = db_url.replace(f":{databases.MARIADB_PORT}/", f":{proxy.port}/")
    f = Fault(url, proxy)
    try:
        yield f
    finally:
        f.close()


@pytest.fixture
def cut_proxy() -> Iterator[tuple[str, TCPProxy]]:
    with databases.mariadb_database() as url:
        proxy = TCPProxy(databases.MARIADB_HOST, databases.MARIADB_PORT)
        try:
            yield url.replace(f":{databases.MARIADB_PORT}/", f":{proxy.port}/"), proxy
        finally:
            proxy.close()


def patient(srv: ServerProcess, passkey: str, pilot_ref: str | None = None) -> IceProdClient:
    """The client library as a user has it, with retries that outlast the fault."""
    return IceProdClient(srv.url, passkey=passkey, pilot_ref=pilot_ref, timeout=30,
                         retries=15, backoff=0.2, max_backoff=1.0)


def in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - shown by the test
            out["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def outcome(thread: threading.Thread, out: dict[str, Any]) -> Any:
    thread.join(90)
    assert not thread.is_alive(), "the call never returned"
    if "error" in out:
        raise out["error"]
    return out["result"]


def datasets(srv: ServerProcess) -> list[str]:
    page = srv.client(retries=10).call("public_get_datasets", limit=1000)
    return [d["dataset_id"] for d in page["items"]]


def processing(srv: ServerProcess, dataset_id: str) -> set[str]:
    page = srv.client(retries=10).call("public_get_tasks", dataset_id=dataset_id,
                                       status="processing", limit=1000)
    return {t["task_id"] for t in page["items"]}


def frozen_through(fault: Fault, call: Any, statement: bytes) -> Any:
    """Make ``call`` while the fault freezes its unit past ``db_timeout``, then let the
    database go on; returns what the call finally answered."""
    fault.freeze(statement)
    thread, out = in_thread(call)
    fault.wait_frozen()
    time.sleep(DB_TIMEOUT + 1.0)  # the unit outlives its caller's db_timeout
    fault.release()
    return outcome(thread, out)


def test_a_submission_frozen_past_db_timeout_makes_one_dataset(server: Any,
                                                               fault: Fault) -> None:
    srv: ServerProcess = server(fault.url, env=ENV)
    user = patient(srv, srv.deployment.passkey("user", "alice"))
    dataset_id = frozen_through(
        fault, lambda: submit(user, config(task("a")), description="once"), SUBMISSION)
    assert datasets(srv) == [dataset_id]


def test_a_claim_frozen_past_db_timeout_strands_nothing(server: Any, fault: Fault) -> None:
    srv: ServerProcess = server(fault.url, env=ENV)
    owner = srv.client(srv.deployment.passkey("user", "alice"))
    dataset_id = submit(owner, config(task("a")), njobs=3)
    wait_counts(srv.client(), dataset_id, {"queued": 3})
    pilot = patient(srv, srv.deployment.passkey("pilot"), pilot_ref="p1")
    tasks = frozen_through(fault, lambda: pilot.call("new_task", **offer(cpu=1)), CLAIM)
    handed = {t["options"]["task_id"] for t in tasks}
    assert len(handed) == 1, tasks
    # what the pilot holds is what it was handed: no claim waits for its lease to run out
    assert processing(srv, dataset_id) == handed
    assert pilot.call("stillrunning", task_id=handed.pop()) is True


def test_the_answers_say_whether_anything_may_have_committed(server: Any,
                                                             fault: Fault) -> None:
    """Raw answers, no retries: -32006 for a COMMIT frozen past db_timeout (MariaDB),
    -32005 for a unit that never reached it (SQLite); either way a repeat with the same
    request_key answers one dataset."""
    srv: ServerProcess = server(fault.url, env=ENV)
    key = srv.deployment.passkey("user", "alice")
    once = IceProdClient(srv.url, passkey=key, retries=0, timeout=30)
    params = {"config": config(task("a")), "request_key": "submission-1"}
    fault.freeze(SUBMISSION)
    started = time.monotonic()
    with pytest.raises(RPCError) as e:
        once.call("submit_dataset", **params)
    took = time.monotonic() - started
    expected = -32006 if fault.mariadb else -32005
    assert e.value.code == expected and took < DB_TIMEOUT + SLACK, (e.value, took)
    assert set(e.value.data) == {"reason", "request_id"}, e.value.data
    fault.release()
    dataset_id = patient(srv, key).call("submit_dataset", **params)
    assert datasets(srv) == [dataset_id]


@pytest.mark.parametrize("kind", ["submission", "claim"])
def test_a_connection_cut_during_commit(server: Any, cut_proxy: tuple[str, TCPProxy],
                                        kind: str) -> None:
    """MariaDB committed the transaction; the server's connection was closed before the
    answer came back. The client repeats the call; the user gets one dataset, the pilot
    the tasks it holds."""
    url, proxy = cut_proxy
    srv: ServerProcess = server(url, env=ENV)
    user = patient(srv, srv.deployment.passkey("user", "alice"))
    if kind == "submission":
        proxy.on_commit("cut", after=SUBMISSION)
        dataset_id = submit(user, config(task("a")))
        assert proxy.commit_caught.is_set()
        assert datasets(srv) == [dataset_id]
        return
    dataset_id = submit(user, config(task("a")), njobs=3)
    wait_counts(srv.client(), dataset_id, {"queued": 3})
    pilot = patient(srv, srv.deployment.passkey("pilot"), pilot_ref="p1")
    proxy.on_commit("cut", after=CLAIM)
    tasks = pilot.call("new_task", **offer(cpu=1))
    assert proxy.commit_caught.is_set()
    handed = {t["options"]["task_id"] for t in tasks}
    assert len(handed) == 1 and processing(srv, dataset_id) == handed, tasks


def test_a_finish_whose_commit_is_cut_is_reported_once(server: Any,
                                                       cut_proxy: tuple[str, TCPProxy]) -> None:
    """finish_task's repeat changes nothing once it took effect: the client repeats it
    after -32006 and the task is complete once, with one stat row."""
    url, proxy = cut_proxy
    srv: ServerProcess = server(url, env=ENV)
    owner = srv.client(srv.deployment.passkey("user", "alice"))
    dataset_id = submit(owner, config(task("a")))
    wait_counts(srv.client(), dataset_id, {"queued": 1})
    key = srv.deployment.passkey("pilot")
    pilot = patient(srv, key, pilot_ref="p1")
    (claimed,) = pilot.call("new_task", **offer(cpu=1))
    task_id = claimed["options"]["task_id"]
    once = IceProdClient(srv.url, passkey=key, pilot_ref="p1", retries=0)
    proxy.on_commit("cut", after=b"INSERT INTO task_stats")
    with pytest.raises(RPCError) as e:
        once.call("finish_task", task_id=task_id, stats={"time_used": 1.0})
    assert e.value.code == -32006, e.value
    assert pilot.call("finish_task", task_id=task_id,
                      stats={"time_used": 1.0})["status"] == "complete"
    wait_counts(srv.client(), dataset_id, {"complete": 1})
    direct = url.replace(f":{proxy.port}/", f":{databases.MARIADB_PORT}/")
    assert databases.scalar(direct, "SELECT COUNT(*) FROM task_stats") == 1


def test_a_repeat_made_while_the_first_call_commits_waits_for_it(
        server: Any, cut_proxy: tuple[str, TCPProxy]) -> None:
    """MariaDB: the first submission's COMMIT is held (process A, through the proxy); the
    same call with the same key reaches process B (straight to MariaDB) meanwhile. B waits
    on the key the first call wrote, and once that COMMIT lands answers its dataset."""
    url, proxy = cut_proxy
    a: ServerProcess = server(url, env=ENV)
    direct = url.replace(f":{proxy.port}/", f":{databases.MARIADB_PORT}/")
    b: ServerProcess = server.another(a, env={**ENV, "ICEPROD_DB_URL": direct})
    key = a.deployment.passkey("user", "alice")
    params = {"config": config(task("a")), "request_key": "while-committing"}
    proxy.on_commit("freeze", after=SUBMISSION)
    first = in_thread(lambda: IceProdClient(a.url, passkey=key, retries=0,
                                            timeout=30).call("submit_dataset", **params))
    assert proxy.commit_caught.wait(30), "the COMMIT never came"
    second = in_thread(lambda: IceProdClient(b.url, passkey=key, retries=0,
                                             timeout=30).call("submit_dataset", **params))
    time.sleep(1.0)
    assert second[0].is_alive(), "the repeat did not wait for the first call"
    proxy.forward()
    dataset_id = outcome(*second)
    assert outcome(*first) == dataset_id
    assert datasets(b) == [dataset_id]
