"""Slow, idle and oversized requests: each gets an answer or a closed connection, within
the configured time, while other callers are served.

The server runs with ``idle_connection_timeout`` and ``body_timeout`` of 2 seconds; a
connection that sends its headers one byte a second, or announces a body and never sends
it, is closed by the server (the test waits for the close, with a deadline well above the
timeout).
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest

from tests.support import jsonrpc
from tests.support.servers import ServerProcess

TIMEOUT = 2.0
# how long the test waits for the server to close a connection: the timeout, plus a margin
# for a loaded machine
CLOSE_WITHIN = TIMEOUT + 8.0


@pytest.fixture(scope="module")
def srv(module_server: Any, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    url = "sqlite:///" + str(tmp_path_factory.mktemp("db") / "iceprod.db")
    server: ServerProcess = module_server(url, env={
        "ICEPROD_IDLE_CONNECTION_TIMEOUT": str(TIMEOUT),
        "ICEPROD_BODY_TIMEOUT": str(TIMEOUT)})
    return server


def connect(srv: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=CLOSE_WITHIN)
    return sock


def wait_closed(sock: socket.socket) -> float:
    """Seconds until the server closes ``sock`` (reads whatever it sends first)."""
    started = time.monotonic()
    sock.settimeout(CLOSE_WITHIN)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {CLOSE_WITHIN} s")
    return time.monotonic() - started


def echo_works(srv: ServerProcess) -> None:
    assert srv.client(retries=0).call("echo", value="still here") == "still here"


def test_headers_one_byte_a_second_are_cut_off(srv: ServerProcess) -> None:
    request = b"POST /jsonrpc HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    with connect(srv) as sock:
        started = time.monotonic()
        closed = False
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            # the server answers nothing; a recv with a one-second timeout paces the
            # bytes and notices the close as soon as it happens
            sock.settimeout(1.0)
            try:
                if sock.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
            except ConnectionResetError:
                closed = True
                break
            if time.monotonic() - started > CLOSE_WITHIN:
                break
        assert closed, f"still open after {time.monotonic() - started:.1f} s of slow headers"
    echo_works(srv)


def test_an_idle_connection_is_closed(srv: ServerProcess) -> None:
    with connect(srv) as sock:
        assert wait_closed(sock) < CLOSE_WITHIN
    echo_works(srv)


def test_a_body_that_never_comes_is_cut_off(srv: ServerProcess) -> None:
    with connect(srv) as sock:
        sock.sendall(b"POST /jsonrpc HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"jsonrpc\"")
        assert wait_closed(sock) < CLOSE_WITHIN
    echo_works(srv)


def test_a_70_kb_header_gets_431(srv: ServerProcess) -> None:
    answer = jsonrpc.post(srv.rpc_url, json.dumps({"jsonrpc": "2.0", "id": 1,
                                                   "method": "echo", "params": [1]}),
                          headers={"X-Big": "b" * 70_000})
    assert answer.status == 431
    assert "header" in answer.json()["error"]
    # headers under the limit are fine
    answer = jsonrpc.post(srv.rpc_url, json.dumps({"jsonrpc": "2.0", "id": 1,
                                                   "method": "echo", "params": [1]}),
                          headers={"X-Big": "b" * 30_000})
    assert answer.status == 200 and answer.json()["result"] == 1
    echo_works(srv)


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Token abc", "Digest x=1",
                                    "bearer", "Negotiate"])
def test_an_authorization_scheme_other_than_bearer(srv: ServerProcess, header: str) -> None:
    response = jsonrpc.request(srv.rpc_url, "echo", [1], headers={"Authorization": header})
    assert response.get("error", {}).get("code") == -32001, response
    assert "Bearer" in json.dumps(response["error"]), response["error"]
    # the same over the file routes: 401 naming the scheme
    answer = jsonrpc.post(srv.url + "/download/nothing", b"", method="GET",
                          headers={"Authorization": header})
    assert answer.status == 401 and "Bearer" in answer.json()["error"]
