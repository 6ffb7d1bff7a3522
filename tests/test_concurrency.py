"""The concurrency demonstration: blocking work runs on the ``db`` pool, never on the loop.

The server's application runs in this process so that the test can add, for itself only,
a method that needs one second of blocking database work (``time.sleep(1)`` inside a unit
of work on the pool), and can watch the event loop's lag while pilots hammer the server.
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


def _one_second_of_blocking_work(session: Session) -> str:
    time.sleep(1.0)
    return "done"


async def test_slow_read(ctx: Context) -> str:
    """One second of blocking work on the db pool (registered by this test module only)."""
    result: str = await ctx.services.db.read(_one_second_of_blocking_work)
    return result


test_slow_read.__test__ = False  # type: ignore[attr-defined]  # not a test itself


@pytest.fixture
def deployment(tmp_path: Path, sqlite_url: str) -> Deployment:
    return Deployment.init(tmp_path / "data", sqlite_url)


@pytest.fixture
def app_server(deployment: Deployment) -> Iterator[InProcessServer]:
    with extra_method("test_slow_read", test_slow_read, ANYONE), \
            in_process_server(deployment.data_dir, {"db_threads": DB_THREADS},
                              scheduler=False) as server:
        yield server


def _timed_call(url: str, method: str, params: Any = None) -> tuple[float, Any]:
    started = time.monotonic()
    response = jsonrpc.request(url + "/jsonrpc", method, params or [])
    return time.monotonic() - started, response


def test_five_slow_requests_run_at_once(app_server: InProcessServer) -> None:
    with ThreadPoolExecutor(5) as pool:
        started = time.monotonic()
        futures = [pool.submit(_timed_call, app_server.url, "test_slow_read")
                   for _ in range(5)]
        results = [f.result(timeout=30) for f in futures]
        elapsed = time.monotonic() - started
    for _took, response in results:
        assert response.get("result") == "done", response
    assert elapsed < 3.0, f"five requests of one second each took {elapsed:.2f} s together: " \
                          "they were not run concurrently"
    assert all(took >= 0.95 for took, _ in results)


def test_cheap_request_answers_while_the_pool_is_busy(app_server: InProcessServer) -> None:
    with ThreadPoolExecutor(DB_THREADS) as pool:
        busy = [pool.submit(_timed_call, app_server.url, "test_slow_read")
                for _ in range(DB_THREADS)]
        time.sleep(0.2)  # the slow requests are on the pool now
        took, response = _timed_call(app_server.url, "echo", ["ping"])
        still_busy = sum(not f.done() for f in busy)
        for f in busy:
            assert f.result(timeout=30)[1].get("result") == "done"
    assert response == {"jsonrpc": "2.0", "result": "ping", "id": 1}
    assert still_busy == DB_THREADS, "the pool was not busy during the echo"
    assert took < 0.5, f"echo took {took:.2f} s while the db pool was busy"


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
