"""The JSON-RPC fast path: small ``POST /jsonrpc`` calls without a cookie (every pilot's and
site's call) are answered below Tornado's ``RequestHandler``; calls with a cookie, or with
bodies over the small-body limit, go through the handlers. A caller must not be able to tell
the two apart: same answers, same headers, same access log and metrics. On SQLite and on
MariaDB.

Sending an unrelated cookie (``Cookie: unrelated=1``) makes a call take the handler path
while staying anonymous, so every check below compares the two paths on the same call.
"""

from __future__ import annotations

import gzip
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from iceprod_server.handlers import jsonrpc as jsonrpc_handlers
from tests.support import jsonrpc
from tests.support.http import fetch
from tests.support.inprocess import in_process_server
from tests.support.servers import Deployment, ServerProcess, start_server

HANDLER_PATH = {"Cookie": "unrelated=1"}
REQUEST_ID = re.compile(r"^[0-9a-f]{16}$")


@pytest.fixture(scope="module")
def srv(module_server: Any, module_db_url: str) -> ServerProcess:
    server: ServerProcess = module_server(module_db_url)
    return server


@pytest.fixture(scope="module")
def pilot_key(srv: ServerProcess) -> str:
    return srv.deployment.passkey("pilot")


def both(srv: ServerProcess, body: str | bytes,
         headers: dict[str, str] | None = None) -> tuple[jsonrpc.Answer, jsonrpc.Answer]:
    """The same request on the fast path and on the handler path."""
    fast = jsonrpc.post(srv.rpc_url, body, headers=dict(headers or {}))
    slow = jsonrpc.post(srv.rpc_url, body, headers={**(headers or {}), **HANDLER_PATH})
    return fast, slow


def same_answer(fast: jsonrpc.Answer, slow: jsonrpc.Answer) -> Any:
    assert fast.status == slow.status == 200, (fast, slow)
    assert fast.headers["content-type"].startswith("application/json")
    assert slow.headers["content-type"].startswith("application/json")
    for answer in (fast, slow):
        assert REQUEST_ID.match(answer.headers.get("x-request-id", "")), answer.headers
    assert fast.headers["x-request-id"] != slow.headers["x-request-id"]
    if not fast.body:
        assert not slow.body
        return None
    assert fast.json() == slow.json()
    return fast.json()


def call(method: str, params: Any = None, id: Any = 1) -> str:
    req: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": id}
    if params is not None:
        req["params"] = params
    return json.dumps(req)


def test_answers_are_the_same_on_both_paths(srv: ServerProcess, pilot_key: str) -> None:
    bearer = {"Authorization": f"Bearer {pilot_key}"}
    assert same_answer(*both(srv, call("echo", ["hello"])))["result"] == "hello"
    assert same_answer(*both(srv, call("echo", ["hi"]), bearer))["result"] == "hi"
    # the legacy passkey param authenticates too
    legacy = call("echo", {"value": "x", "passkey": pilot_key})
    assert same_answer(*both(srv, legacy))["result"] == "x"
    assert same_answer(*both(srv, '{"jsonrpc": "2.0", "method"'))["error"]["code"] == -32700
    assert same_answer(*both(srv, call("no_such_method")))["error"]["code"] == -32601
    basic = same_answer(*both(srv, call("echo", ["x"]), {"Authorization": "Basic dXNlcg=="}))
    assert basic["error"]["code"] == -32001
    assert basic["error"]["data"]["schemes"] == ["Bearer"]
    wrong_key = same_answer(*both(srv, call("echo", ["x"]), {"Authorization": "Bearer nope"}))
    assert wrong_key["error"]["code"] == -32001
    # a pilot may not submit datasets; an anonymous caller must authenticate first
    forbidden = same_answer(*both(srv, call("submit_dataset", {"config": {}}), bearer))
    assert forbidden["error"]["code"] == -32002
    anonymous = same_answer(*both(srv, call("submit_dataset", {"config": {}})))
    assert anonymous["error"]["code"] == -32001
    batch = same_answer(*both(srv, json.dumps([
        json.loads(call("echo", [1], id=1)),
        {"jsonrpc": "2.0", "method": "echo", "params": [2]},  # a notification
        json.loads(call("echo", [3], id="three")),
    ])))
    assert batch == [{"jsonrpc": "2.0", "result": 1, "id": 1},
                     {"jsonrpc": "2.0", "result": 3, "id": "three"}]
    assert same_answer(*both(srv, '{"jsonrpc": "2.0", "method": "echo", "params": [1]}')) is None


def test_large_answers_are_compressed_for_clients_that_accept_gzip(srv: ServerProcess) -> None:
    text = "photon " * 2000
    fast, slow = both(srv, call("echo", [text]), {"Accept-Encoding": "gzip"})
    for answer in (fast, slow):
        assert answer.status == 200
        assert answer.headers.get("content-encoding") == "gzip", answer.headers
        assert "Accept-Encoding" in answer.headers.get("vary", "")
        assert len(answer.body) < len(text) // 4
        assert json.loads(gzip.decompress(answer.body))["result"] == text
    plain, _ = both(srv, call("echo", [text]))
    assert "content-encoding" not in plain.headers
    assert json.loads(plain.body)["result"] == text
    # small answers are not worth compressing
    small, _ = both(srv, call("echo", ["x"]), {"Accept-Encoding": "gzip"})
    assert "content-encoding" not in small.headers
    assert json.loads(small.body)["result"] == "x"


def test_request_ids_from_clients_are_not_trusted(srv: ServerProcess) -> None:
    fast, slow = both(srv, call("echo", [1]), {"X-Request-Id": "abcdefabcdefabcd"})
    same_answer(fast, slow)
    assert fast.headers["x-request-id"] != "abcdefabcdefabcd"
    assert slow.headers["x-request-id"] != "abcdefabcdefabcd"


def test_access_log_and_metrics_count_fast_calls(srv: ServerProcess, pilot_key: str) -> None:
    def posts() -> float:
        reply = fetch(srv.port, "GET", "/metrics")
        assert reply.status == 200
        found = re.findall(r'^iceprod_http_requests_total\{handler="JSONRPCHandler",'
                           r'method="POST",status="200"\} ([0-9.e+]+)$',
                           reply.body.decode(), re.MULTILINE)
        return float(found[0]) if found else 0.0

    before = posts()
    ids = []
    for _ in range(5):
        answer = jsonrpc.post(srv.rpc_url, call("echo", ["logged"]),
                              headers={"Authorization": f"Bearer {pilot_key}"})
        assert answer.json()["result"] == "logged"
        ids.append(answer.headers["x-request-id"])
    assert posts() == before + 5
    deadline = time.monotonic() + 10
    while True:
        lines = [line for line in srv.log_text().splitlines() if ids[-1] in line]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert lines, f"no access log line with request id {ids[-1]}"
    assert "200 POST /jsonrpc echo" in lines[-1], lines
    assert "role=pilot" in lines[-1], lines
    assert pilot_key not in srv.log_text()


def test_small_body_limit_below_the_fast_path_still_answers_413(tmp_path: Path,
                                                                 sqlite_url: str) -> None:
    deployment = Deployment.init(tmp_path / "data", sqlite_url)
    srv = start_server(deployment, tmp_path, env={"ICEPROD_MAX_BODY_BYTES": "1000"})
    try:
        answer = jsonrpc.post(srv.rpc_url, call("echo", ["x" * 2000]))
        assert answer.status == 413, answer
        assert "1000 bytes" in answer.json()["error"]
        fine = jsonrpc.post(srv.rpc_url, call("echo", ["x" * 100]))
        assert fine.json()["result"] == "x" * 100
    finally:
        srv.stop()


def test_cookieless_small_calls_take_the_fast_path(tmp_path: Path, sqlite_url: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Reaches inside the server (in this process) to see which path answered."""
    deployment = Deployment.init(tmp_path / "data", sqlite_url)
    fast_ids: list[str] = []
    made = jsonrpc_handlers.FastJSONRPC.__init__

    def counting_init(self: jsonrpc_handlers.FastJSONRPC, *args: Any) -> None:
        made(self, *args)
        fast_ids.append(self.request_id)

    monkeypatch.setattr(jsonrpc_handlers.FastJSONRPC, "__init__", counting_init)
    with in_process_server(deployment.data_dir, scheduler=False) as server:
        url = server.url + "/jsonrpc"
        fast = jsonrpc.post(url, call("echo", [1]))
        slow = jsonrpc.post(url, call("echo", [1]), headers=HANDLER_PATH)
        big = jsonrpc.post(url, call("echo", ["y" * 70_000]))
    assert fast.json()["result"] == slow.json()["result"] == 1
    assert big.json()["result"] == "y" * 70_000
    assert fast_ids == [fast.headers["x-request-id"]]
