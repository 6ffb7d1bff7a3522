"""A long batch lets other callers in.

A batch of 1,000 calls of a method that holds the event loop for 2 ms each (registered for
this test only) keeps the loop busy for two seconds in all. An ``echo`` from another caller,
sent once the batch has started, is answered while the batch is still running, not after it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from iceprod_server.rpc.context import Context
from iceprod_server.rpc.registry import ANYONE
from tests.support import jsonrpc
from tests.support.inprocess import InProcessServer, extra_method, in_process_server
from tests.support.servers import Deployment

CALLS = 1000
started = threading.Event()


async def test_busy_call(ctx: Context) -> int:
    """Holds the event loop for 2 ms: CPU work that a method does without awaiting."""
    started.set()
    time.sleep(0.002)
    return 1


test_busy_call.__test__ = False  # type: ignore[attr-defined]  # not a test itself


@pytest.fixture
def app_server(tmp_path: Path, sqlite_url: str) -> Iterator[InProcessServer]:
    deployment = Deployment.init(tmp_path / "data", sqlite_url)
    with extra_method("test_busy_call", test_busy_call, ANYONE), \
            in_process_server(deployment.data_dir, {"max_batch_length": CALLS},
                              scheduler=False) as server:
        yield server


def test_a_long_batch_yields_to_other_callers(app_server: InProcessServer) -> None:
    started.clear()
    batch = json.dumps([{"jsonrpc": "2.0", "id": i, "method": "test_busy_call"}
                        for i in range(CALLS)])
    done = threading.Event()
    answers: list[jsonrpc.Answer] = []

    def send_batch() -> None:
        answers.append(jsonrpc.post(app_server.url + "/jsonrpc", batch, timeout=60))
        done.set()

    sender = threading.Thread(target=send_batch)
    sender.start()
    assert started.wait(30), "the batch did not start"
    response = jsonrpc.request(app_server.url + "/jsonrpc", "echo", ["in between"])
    batch_was_running = not done.is_set()
    sender.join(60)
    assert response["result"] == "in between"
    assert batch_was_running, "echo was answered only after the whole batch"
    assert len(answers[0].json()) == CALLS
