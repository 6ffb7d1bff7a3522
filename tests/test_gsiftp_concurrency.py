"""Twenty GridFTP transfers on the server's own event loop while it keeps answering.

The IceProd application runs in this process (:mod:`tests.support.inprocess`) configured
with the backend under test. On the loop that serves HTTP, its ``services.gsiftp`` client
moves twenty files at once, ten up and ten down (hashed chunk by chunk, as the file proxy
consumes them), while this thread keeps calling ``echo`` over JSON-RPC and a coroutine on
the loop measures how late its own wake-ups come (the loop's lag, measured where it
happens, without this process's HTTP client in the figure). A backend that blocked the
loop (a blocking library call, a synchronous pipe read, hashing on the loop thread of the
backend's own) would show as lag; every echo must be answered while the transfers run.
The bounds leave room for a loaded two-core machine: the client threads, the server's
loop and the GridFTP server share it.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from iceprod_server.gsiftp import BACKENDS
from tests.support import gridftp, jsonrpc
from tests.support.gridftp import MiB, random_bytes
from tests.support.inprocess import InProcessServer, in_process_server
from tests.support.servers import Deployment

TRANSFERS = 20
SIZE = 16 * MiB
# on an idle machine the loop's lag stays around a few milliseconds, and an echo takes
# about one; a transfer done on the loop would block it for the whole 16 MiB
LAG_LIMIT = 0.5
ECHO_LIMIT = 2.0
ECHO_INTERVAL = 0.02
LAG_TICK = 0.01


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    root = tmp_path_factory.mktemp("iceprod")
    return Deployment.init(root / "data", f"sqlite:///{root / 'iceprod.db'}")


async def transfer_all(app: InProcessServer, urls: list[str],
                       payloads: list[bytes]) -> list[str]:
    """On the app's loop: even-numbered files down, odd-numbered up, all at once; the
    sha256 of what each moved."""
    assert app.services is not None
    client = app.services.gsiftp

    async def one(i: int) -> str:
        if i % 2:
            await client.put(urls[i], data=payloads[i])
            return hashlib.sha256(payloads[i]).hexdigest()
        hasher = hashlib.sha256()
        await client.get(urls[i], callback=hasher.update)
        return hasher.hexdigest()

    try:
        # every transfer ends before the first failure is raised: none is left running
        # when the test stops the loop
        outcomes = await asyncio.gather(*(one(i) for i in range(len(urls))),
                                        return_exceptions=True)
    finally:
        await client.close()
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return [str(outcome) for outcome in outcomes]


def timed_echo(url: str) -> float:
    started = time.monotonic()
    answer = jsonrpc.request(url + "/jsonrpc", "echo", ["ping"])
    took = time.monotonic() - started
    assert answer.get("result") == "ping", answer
    return took


@pytest.fixture
def frozen_test_heap() -> Iterator[None]:
    """Keep the garbage collector off this test process's own objects (pytest's and every
    module's): a full collection scans them all holding the GIL, a pause that a server
    in a process of its own does not have."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("frozen_test_heap")
@pytest.mark.parametrize("backend", BACKENDS)
def test_twenty_transfers_while_the_loop_answers_echo(
        backend: str, gridftp_server: gridftp.GridFTPServer, deployment: Deployment) -> None:
    with gridftp.served_directory(backend) as directory:
        run_and_watch(backend, gridftp_server, directory, deployment)


def run_and_watch(backend: str, gridftp_server: gridftp.GridFTPServer, directory: Path,
                  deployment: Deployment) -> None:
    payloads = [random_bytes(SIZE, seed=i) for i in range(TRANSFERS)]
    for i in range(0, TRANSFERS, 2):
        (directory / f"{i}.bin").write_bytes(payloads[i])
    urls = [gridftp_server.url(directory / f"{i}.bin") for i in range(TRANSFERS)]
    overrides = {"gsiftp_backend": backend, "gsiftp_timeout": 120.0}
    with in_process_server(deployment.data_dir, overrides, scheduler=False) as app:
        timed_echo(app.url)  # the first request sets up what later ones reuse
        lags: list[float] = []
        watching = asyncio.run_coroutine_threadsafe(watch_lag(lags), app.loop)
        moving = asyncio.run_coroutine_threadsafe(transfer_all(app, urls, payloads), app.loop)
        echoes: list[float] = []
        while not moving.done():
            echoes.append(timed_echo(app.url))
            time.sleep(ECHO_INTERVAL)
        moved = moving.result()
        watching.cancel()
    assert moved == [hashlib.sha256(p).hexdigest() for p in payloads]
    for i in range(1, TRANSFERS, 2):
        assert (directory / f"{i}.bin").read_bytes() == payloads[i], f"upload {i} differs"
    assert len(echoes) >= 5, f"the transfers took only {len(echoes)} echoes: too short to tell"
    worst, lag = max(echoes), max(lags)
    print(f"{backend} on {gridftp_server.scheme}: {len(echoes)} echoes during the transfers, "
          f"slowest {worst * 1000:.0f} ms; loop lag over {len(lags)} ticks, worst "
          f"{lag * 1000:.0f} ms")
    assert lag < LAG_LIMIT, (f"the loop was held up for {lag:.2f} s while {TRANSFERS} "
                             f"transfers ran on it: something blocked it")
    assert worst < ECHO_LIMIT, f"an echo took {worst:.2f} s while the transfers ran"


async def watch_lag(lags: list[float]) -> None:
    """On the loop: how much later than asked each short sleep ends."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(LAG_TICK)
        lags.append(loop.time() - before - LAG_TICK)
