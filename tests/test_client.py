"""``iceprod_server.client``: the passkey header, URLs, timeouts, and retries only where a
retry is safe (-32005 and connection errors; -32006 only for a call with a request_key),
never after any other error."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from iceprod_server.client import CONNECTION_ERROR, IceProdClient, RPCError, jsonrpc_url
from iceprod_server.errors import Conflict, OutcomeUnknown, Unavailable
from iceprod_server.rpc.context import Context
from iceprod_server.rpc.registry import ANYONE
from tests.support.inprocess import InProcessServer, extra_method, in_process_server
from tests.support.servers import Deployment, unused_port

calls: dict[str, int] = {}


async def flaky(ctx: Context, fail_times: int = 0) -> str:
    """-32005 for the first ``fail_times`` calls, then success."""
    calls["flaky"] = calls.get("flaky", 0) + 1
    if calls["flaky"] <= fail_times:
        raise Unavailable("database busy, try again")
    return "ok"


async def unknown_once(ctx: Context, request_key: str | None = None) -> str:
    """-32006 for the first call, then success."""
    calls["unknown"] = calls.get("unknown", 0) + 1
    if calls["unknown"] == 1:
        raise OutcomeUnknown("the database did not confirm the outcome")
    return "ok"


async def refuse(ctx: Context) -> str:
    calls["refuse"] = calls.get("refuse", 0) + 1
    raise Conflict("not from this state")


async def caller_of(ctx: Context) -> dict[str, str | None]:
    return {"role": ctx.caller.role, "pilot_ref": ctx.caller.pilot_ref}


@pytest.fixture
def app_server(tmp_path: Path, db_url: str) -> Iterator[InProcessServer]:
    calls.clear()
    deployment = Deployment.init(tmp_path / "data", db_url)
    with extra_method("test_flaky", flaky, ANYONE), \
            extra_method("test_refuse", refuse, ANYONE), \
            extra_method("test_unknown_once", unknown_once, ANYONE), \
            extra_method("test_caller", caller_of, ANYONE), \
            in_process_server(deployment.data_dir, scheduler=False) as server:
        server.deployment = deployment  # type: ignore[attr-defined]
        yield server


@pytest.mark.parametrize("given, expected", [
    ("http://h:8080", "http://h:8080/jsonrpc"),
    ("http://h:8080/", "http://h:8080/jsonrpc"),
    ("http://h:8080/jsonrpc", "http://h:8080/jsonrpc"),
    ("https://h/iceprod/jsonrpc", "https://h/iceprod/jsonrpc"),
])
def test_jsonrpc_url(given: str, expected: str) -> None:
    assert jsonrpc_url(given) == expected


@pytest.mark.parametrize("bad", ["h:8080", "ftp://h/", "http://"])
def test_bad_urls_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        jsonrpc_url(bad)


def test_retries_unavailable_then_succeeds(app_server: InProcessServer) -> None:
    client = IceProdClient(app_server.url, retries=3, backoff=0.01)
    assert client.call("test_flaky", fail_times=2) == "ok"
    assert calls["flaky"] == 3


def test_gives_up_after_its_retries(app_server: InProcessServer) -> None:
    client = IceProdClient(app_server.url, retries=2, backoff=0.01)
    with pytest.raises(RPCError) as e:
        client.call("test_flaky", fail_times=10)
    assert e.value.code == -32005
    assert calls["flaky"] == 3


def test_never_retries_other_errors(app_server: InProcessServer) -> None:
    client = IceProdClient(app_server.url, retries=5, backoff=0.01)
    with pytest.raises(RPCError) as e:
        client.call("test_refuse")
    assert e.value.code == -32004 and e.value.data["reason"] == "not from this state"
    assert calls["refuse"] == 1
    with pytest.raises(RPCError) as e:
        client.call("no_such_method")
    assert e.value.code == -32601


def test_outcome_unknown_is_repeated_only_with_a_request_key(
        app_server: InProcessServer) -> None:
    client = IceProdClient(app_server.url, retries=3, backoff=0.01)
    with pytest.raises(RPCError) as e:
        client.call("test_unknown_once")
    assert e.value.code == -32006 and calls["unknown"] == 1
    calls.clear()
    assert client.call("test_unknown_once", request_key="k-1") == "ok"
    assert calls["unknown"] == 2


def test_passkey_header_and_pilot_ref(app_server: InProcessServer) -> None:
    key = app_server.deployment.passkey("pilot")  # type: ignore[attr-defined]
    client = IceProdClient(app_server.url, passkey=key, pilot_ref="pilot-7")
    assert client.call("test_caller") == {"role": "pilot", "pilot_ref": "pilot-7"}
    assert IceProdClient(app_server.url).call("test_caller") == {"role": None,
                                                                 "pilot_ref": ""}
    with pytest.raises(RPCError) as e:
        IceProdClient(app_server.url, passkey="wrong", retries=3).call("echo", 1)
    assert e.value.code == -32001


def test_one_client_shared_by_threads(app_server: InProcessServer) -> None:
    client = IceProdClient(app_server.url)
    results: list[object] = []

    def work(i: int) -> None:
        for j in range(20):
            results.append(client.call("echo", [i, j]) == [i, j])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 160


def test_connection_errors_are_retried_then_reported() -> None:
    port = unused_port()  # nothing listens there
    client = IceProdClient(f"http://127.0.0.1:{port}", retries=2, backoff=0.05,
                           timeout=2)
    started = time.monotonic()
    with pytest.raises(RPCError) as e:
        client.call("echo", 1)
    assert e.value.code == CONNECTION_ERROR
    assert time.monotonic() - started >= 0.05, "no backoff between the attempts"


def test_timeout_is_a_connection_error() -> None:
    with socket.socket() as listener:  # accepts, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = IceProdClient(f"http://127.0.0.1:{port}", retries=0, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(RPCError) as e:
            client.call("echo", 1)
        assert e.value.code == CONNECTION_ERROR
        assert time.monotonic() - started < 5
