"""The concurrency demonstration: blocking work runs on the ``db`` pool, never on the loop.

The server's application runs in this process so that the test can add, for itself only,
a method whose unit of work blocks its pool thread until the test lets it go, and can watch
the event loop's lag while pilots hammer the server. The test sees how many of those units
are blocked at once, so concurrency is shown by counting, not by timing.
"""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from iceprod_server.rpc.context import Context
from iceprod_server.rpc.registry import ANYONE
from tests.support import jsonrpc
from tests.support.datasets import REPO, config, submit, task
from tests.support.inprocess import InProcessServer, extra_method, in_process_server
from tests.support.servers import Deployment, clean_environ

DB_THREADS = 8


class Gate:
    """Blocking units of work that the test holds and releases."""

    def __init__(self) -> None:
        self.blocked = 0
        self.changed = threading.Condition()
        self.release = threading.Event()

    def work(self, session: Session) -> str:
        with self.changed:
            self.blocked += 1
            self.changed.notify_all()
        try:
            return "done" if self.release.wait(30) else "never released"
        finally:
            with self.changed:
                self.blocked -= 1
                self.changed.notify_all()

    def wait_blocked(self, n: int, timeout: float = 30.0) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.blocked >= n, timeout), \
                f"only {self.blocked} of {n} units of work were on the pool at once"


GATE = Gate()


async def test_slow_read(ctx: Context) -> str:
    """Blocking work on the db pool until the test releases it (registered by this test
    module only)."""
    result: str = await ctx.services.db.read(GATE.work)
    return result


test_slow_read.__test__ = False  # type: ignore[attr-defined]  # not a test itself


@pytest.fixture
def deployment(tmp_path: Path, sqlite_url: str) -> Deployment:
    return Deployment.init(tmp_path / "data", sqlite_url)


@pytest.fixture
def app_server(deployment: Deployment) -> Iterator[InProcessServer]:
    GATE.release.clear()
    with extra_method("test_slow_read", test_slow_read, ANYONE), \
            in_process_server(deployment.data_dir, {"db_threads": DB_THREADS},
                              scheduler=False) as server:
        try:
            yield server
        finally:
            GATE.release.set()  # never leave a pool thread blocked


def _timed_call(url: str, method: str, params: Any = None) -> tuple[float, Any]:
    started = time.monotonic()
    response = jsonrpc.request(url + "/jsonrpc", method, params or [])
    return time.monotonic() - started, response


def test_five_slow_requests_run_at_once(app_server: InProcessServer) -> None:
    with ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(_timed_call, app_server.url, "test_slow_read")
                   for _ in range(5)]
        # all five blocked on the pool together: none waits for another to finish
        GATE.wait_blocked(5)
        assert not any(f.done() for f in futures)
        GATE.release.set()
        results = [f.result(timeout=30) for f in futures]
    for _took, response in results:
        assert response.get("result") == "done", response


def test_cheap_request_answers_while_the_pool_is_busy(app_server: InProcessServer) -> None:
    with ThreadPoolExecutor(DB_THREADS) as pool:
        busy = [pool.submit(_timed_call, app_server.url, "test_slow_read")
                for _ in range(DB_THREADS)]
        GATE.wait_blocked(DB_THREADS)  # every thread of the db pool is held
        _took, response = _timed_call(app_server.url, "echo", ["ping"])
        still_blocked = GATE.blocked
        GATE.release.set()
        for f in busy:
            assert f.result(timeout=30)[1].get("result") == "done"
    assert response == {"jsonrpc": "2.0", "result": "ping", "id": 1}
    assert still_blocked == DB_THREADS, "the db pool was freed before echo answered"


def test_slow_method_is_registered_only_for_the_test(app_server: InProcessServer) -> None:
    doc = jsonrpc.request(app_server.url + "/jsonrpc", "rpc.discover")["result"]
    assert "test_slow_read" in {m["name"] for m in doc["methods"]}


@pytest.fixture
def frozen_test_heap() -> Iterator[None]:
    """Keep the garbage collector off this test process's own objects (pytest's modules
    and the rest): a full collection scans them all while holding the GIL, a pause the
    server itself, in a process of its own, does not have."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("frozen_test_heap")
def test_event_loop_never_blocks_under_pilot_load(deployment: Deployment) -> None:
    user_key = deployment.passkey("user", "alice")
    pilot_key = deployment.passkey("pilot")
    njobs, pilots = 150, 10
    with in_process_server(deployment.data_dir, {"scheduler_interval": 0.2}) as server:
        from iceprod_server.client import IceProdClient

        owner = IceProdClient(server.url, passkey=user_key)
        dataset_id = submit(owner, config(task("a"), task("b", depends=["a"])), njobs=njobs)
        lags: list[float] = []
        running = threading.Event()
        running.set()

        async def watch_loop() -> None:
            loop = asyncio.get_running_loop()
            while running.is_set():
                before = loop.time()
                await asyncio.sleep(0.01)
                lags.append(loop.time() - before - 0.01)

        watcher = asyncio.run_coroutine_threadsafe(watch_loop(), server.loop)
        load = subprocess.run(
            [sys.executable, "-m", "tests.support.pilot_load", server.url, pilot_key,
             dataset_id, str(2 * njobs), str(pilots)],
            capture_output=True, text=True, cwd=REPO, timeout=180, env=clean_environ())
        running.clear()
        watcher.result(timeout=10)
        final = owner.call("public_get_number_of_tasks_in_each_state", dataset_id=dataset_id)
    assert load.returncode == 0, load.stderr[-3000:]
    assert int(load.stdout.split()[-1]) == 2 * njobs
    assert final == {"complete": 2 * njobs}, final
    assert len(lags) > 100, "the loop watcher did not run"
    worst = max(lags)
    print(f"loop lag over {len(lags)} samples: max {worst * 1000:.1f} ms, "
          f"mean {sum(lags) / len(lags) * 1000:.1f} ms")
    assert worst < 0.2, f"the event loop was blocked for {worst:.3f} s under pilot load " \
                        f"({json.dumps(sorted(lags)[-5:])})"
