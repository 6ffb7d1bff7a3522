"""JSON-RPC 2.0 conformance: the examples of the specification (section 7, "Examples"),
adapted to our methods, give the responses the specification shows; plus the transport
rules of SPEC section 2 (HTTP status codes, content types, ``__jsonclass__``, the legacy
``passkey`` param). On SQLite and on MariaDB.

The specification's ``subtract``, ``sum``, ``update`` and ``get_data`` become ``echo`` (the
one method every caller may call); its ``foobar`` and ``foo.get`` stay unknown methods.
"""

from __future__ import annotations

import base64
import datetime
import json
from pathlib import Path
from typing import Any

import pytest

from iceprod_server.rpc.context import Context
from iceprod_server.rpc.registry import ANYONE
from tests.support import jsonrpc
from tests.support.inprocess import extra_method, in_process_server
from tests.support.servers import Deployment, ServerProcess

MAX_BODY = 100_000


@pytest.fixture(scope="module")
def srv(module_server: Any, module_db_url: str) -> ServerProcess:
    server: ServerProcess = module_server(module_db_url,
                                          env={"ICEPROD_MAX_BODY_BYTES": str(MAX_BODY)})
    return server


@pytest.fixture(scope="module")
def pilot_key(srv: ServerProcess) -> str:
    return srv.deployment.passkey("pilot")


def send(srv: ServerProcess, body: Any, content_type: str = "application/json") -> Any:
    """POST ``body`` (a str is sent as it is, anything else as JSON); the parsed response,
    or None for an empty body. Every JSON-RPC answer must be HTTP 200."""
    text = body if isinstance(body, str) else json.dumps(body)
    answer = jsonrpc.post(srv.rpc_url, text, content_type=content_type)
    assert answer.status == 200, f"HTTP {answer.status} for {text[:200]}: {answer.body[:300]!r}"
    if not answer.body:
        return None
    assert answer.headers.get("content-type", "").startswith("application/json")
    return answer.json()


def assert_error(response: Any, code: int, id: Any) -> dict[str, Any]:
    assert isinstance(response, dict), response
    assert response.get("jsonrpc") == "2.0", response
    assert "result" not in response, response
    assert response["id"] == id, response
    error: dict[str, Any] = response["error"]
    assert error["code"] == code, response
    assert isinstance(error["message"], str) and error["message"], response
    return error


# -- the specification's examples ---------------------------------------------------------

def test_positional_parameters(srv: ServerProcess) -> None:
    # --> {"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}
    assert send(srv, {"jsonrpc": "2.0", "method": "echo", "params": [19], "id": 1}) == \
        {"jsonrpc": "2.0", "result": 19, "id": 1}
    assert send(srv, {"jsonrpc": "2.0", "method": "echo", "params": [-19], "id": 2}) == \
        {"jsonrpc": "2.0", "result": -19, "id": 2}


def test_named_parameters(srv: ServerProcess) -> None:
    # --> {"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23,
    #      "minuend": 42}, "id": 3}
    assert send(srv, {"jsonrpc": "2.0", "method": "echo", "params": {"value": 19},
                      "id": 3}) == {"jsonrpc": "2.0", "result": 19, "id": 3}
    value = {"minuend": 42, "subtrahend": 23}
    assert send(srv, {"jsonrpc": "2.0", "method": "echo", "params": {"value": value},
                      "id": 4}) == {"jsonrpc": "2.0", "result": value, "id": 4}


def test_notification(srv: ServerProcess) -> None:
    # --> {"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}
    assert send(srv, {"jsonrpc": "2.0", "method": "echo", "params": [[1, 2, 3, 4, 5]]}) is None
    # --> {"jsonrpc": "2.0", "method": "foobar"}: no answer, even for an unknown method
    assert send(srv, {"jsonrpc": "2.0", "method": "foobar"}) is None


def test_non_existent_method(srv: ServerProcess) -> None:
    response = send(srv, {"jsonrpc": "2.0", "method": "foobar", "id": "1"})
    assert_error(response, -32601, "1")


def test_invalid_json(srv: ServerProcess) -> None:
    response = send(srv, '{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]')
    assert_error(response, -32700, None)


def test_invalid_request_object(srv: ServerProcess) -> None:
    response = send(srv, {"jsonrpc": "2.0", "method": 1, "params": "bar"})
    assert_error(response, -32600, None)


def test_batch_with_invalid_json(srv: ServerProcess) -> None:
    response = send(srv, '[\n  {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], '
                         '"id": "1"},\n  {"jsonrpc": "2.0", "method"\n]')
    assert_error(response, -32700, None)  # one error object, not an array


def test_empty_array(srv: ServerProcess) -> None:
    response = send(srv, [])
    assert_error(response, -32600, None)  # one error object, not an array


def test_invalid_batch_of_one(srv: ServerProcess) -> None:
    response = send(srv, [1])
    assert isinstance(response, list) and len(response) == 1, response
    assert_error(response[0], -32600, None)


def test_invalid_batch(srv: ServerProcess) -> None:
    response = send(srv, [1, 2, 3])
    assert isinstance(response, list) and len(response) == 3, response
    for item in response:
        assert_error(item, -32600, None)


def test_mixed_batch(srv: ServerProcess) -> None:
    response = send(srv, [
        {"jsonrpc": "2.0", "method": "echo", "params": [7], "id": "1"},
        {"jsonrpc": "2.0", "method": "echo", "params": [7]},
        {"jsonrpc": "2.0", "method": "echo", "params": [19], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "echo", "params": {"value": ["hello", 5]}, "id": "9"},
    ])
    # the specification lets the server answer a batch in any order: match by id
    assert isinstance(response, list) and len(response) == 5, response
    by_id: dict[Any, list[dict[str, Any]]] = {}
    for item in response:
        by_id.setdefault(item.get("id"), []).append(item)
    assert sorted(by_id, key=str) == ["1", "2", "5", "9", None], response
    assert by_id["1"] == [{"jsonrpc": "2.0", "result": 7, "id": "1"}]
    assert by_id["2"] == [{"jsonrpc": "2.0", "result": 19, "id": "2"}]
    assert_error(by_id[None][0], -32600, None)
    assert_error(by_id["5"][0], -32601, "5")
    assert by_id["9"] == [{"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"}]


def test_batch_of_notifications_gets_empty_200(srv: ServerProcess) -> None:
    answer = jsonrpc.post(srv.rpc_url, json.dumps([
        {"jsonrpc": "2.0", "method": "echo", "params": [[1, 2, 4]]},
        {"jsonrpc": "2.0", "method": "echo", "params": [7]},
    ]))
    assert (answer.status, answer.body) == (200, b"")


# -- HTTP transport -------------------------------------------------------------------------

@pytest.mark.parametrize("verb", ["GET", "PUT", "DELETE"])
def test_only_post_is_allowed(srv: ServerProcess, verb: str) -> None:
    answer = jsonrpc.post(srv.rpc_url, "" if verb == "GET" else "{}", method=verb)
    assert answer.status == 405, (answer.status, answer.body[:200])


def test_oversized_body_is_413(srv: ServerProcess) -> None:
    request: dict[str, Any] = {"jsonrpc": "2.0", "method": "echo",
                               "params": ["x" * (MAX_BODY + 1000)], "id": 1}
    answer = jsonrpc.post(srv.rpc_url, json.dumps(request))
    assert answer.status == 413, (answer.status, answer.body[:200])
    # a body just under the limit is served
    request["params"] = ["x" * (MAX_BODY - 100)]
    answer = jsonrpc.post(srv.rpc_url, json.dumps(request))
    assert answer.status == 200
    assert answer.json()["result"] == request["params"][0]


@pytest.mark.parametrize("content_type", [
    "application/json", "application/json-rpc", "application/x-www-form-urlencoded",
    "text/plain", None,
])
def test_body_parsed_whatever_the_content_type(srv: ServerProcess,
                                                content_type: str | None) -> None:
    answer = jsonrpc.post(srv.rpc_url, '{"jsonrpc": "2.0", "method": "echo", '
                          '"params": ["a=b&c"], "id": 7}', content_type=content_type)
    assert answer.status == 200
    assert answer.json() == {"jsonrpc": "2.0", "result": "a=b&c", "id": 7}


# -- params ---------------------------------------------------------------------------------

@pytest.mark.parametrize("method, params", [
    ("echo", {"valeu": 1}),                          # a misspelt name
    ("echo", [1, 2]),                                # too many positional params
    ("public_get_number_of_tasks_in_each_state", {}),                   # missing
    ("public_get_number_of_tasks_in_each_state", {"dataset_id": [1]}),  # wrong type
    ("public_get_number_of_tasks_in_each_state", [{"id": 1}]),          # wrong type
    ("public_get_datasets", {"limit": "ten"}),
    ("public_get_datasets", {"limit": True}),
])
def test_invalid_params(srv: ServerProcess, method: str, params: Any) -> None:
    response = send(srv, {"jsonrpc": "2.0", "method": method, "params": params, "id": 11})
    error = assert_error(response, -32602, 11)
    assert isinstance(error.get("data"), dict) and error["data"], \
        f"-32602 must say what was wrong in data: {error}"


def test_internal_error_never_leaks_the_traceback(tmp_path: Path, db_url: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    secret = "s3cr3t-detail-in-/some/file.py"

    async def explode(ctx: Context) -> None:
        raise RuntimeError(secret)

    deployment = Deployment.init(tmp_path / "data", db_url)
    with extra_method("test_explode", explode, ANYONE), \
            in_process_server(deployment.data_dir, scheduler=False) as server:
        answer = jsonrpc.post(server.url + "/jsonrpc",
                              '{"jsonrpc": "2.0", "method": "test_explode", "id": 5}')
        assert answer.status == 200
        error = assert_error(answer.json(), -32603, 5)
        text = answer.body.decode()
        assert secret not in text and "Traceback" not in text and "RuntimeError" not in text
        assert error["message"] == "Internal error"
        # the answer names the request, as its X-Request-Id does, so a report can be found
        assert error["data"]["request_id"] == answer.headers["x-request-id"]
        # the server still answers afterwards
        assert jsonrpc.request(server.url + "/jsonrpc", "echo", [1])["result"] == 1
    # the traceback went to the server's log instead
    logged = [r for r in caplog.records if r.exc_info and secret in str(r.exc_info[1])]
    assert logged, "the internal error was not logged with its traceback"


# -- values and credentials -----------------------------------------------------------------

def test_jsonclass_values_round_trip_through_echo(srv: ServerProcess) -> None:
    when = {"__jsonclass__": ["datetime", "2017-03-04T05:06:07.123456"]}
    day = {"__jsonclass__": ["date", "2017-03-04"]}
    blob = {"__jsonclass__": ["bytes", base64.b64encode(b"\x00\xffhits\n").decode()]}
    response = send(srv, {"jsonrpc": "2.0", "method": "echo",
                          "params": [{"when": when, "day": day, "blob": blob}], "id": 1})
    assert response["result"] == {"when": when, "day": day, "blob": blob}


def test_jsonclass_values_round_trip_through_the_client(srv: ServerProcess) -> None:
    client = srv.client()
    value = {"when": datetime.datetime(2017, 3, 4, 5, 6, 7, 123456),
             "day": datetime.date(2017, 3, 4), "blob": b"\x00\xffhits\n", "n": [1, "a"]}
    assert client.call("echo", value) == value


def test_bad_jsonclass_value_is_refused(srv: ServerProcess) -> None:
    response = send(srv, '{"jsonrpc": "2.0", "method": "echo", "id": 1, '
                         '"params": [{"__jsonclass__": ["datetime", "yesterday"]}]}')
    assert "error" in response, response
    assert response["error"]["code"] in (-32700, -32602), response


def test_legacy_passkey_param(srv: ServerProcess, pilot_key: str) -> None:
    # IceProd 2 pilots send the passkey inside params; it is used and removed
    response = send(srv, {"jsonrpc": "2.0", "method": "echo",
                          "params": {"value": "hi", "passkey": pilot_key}, "id": 1})
    assert response == {"jsonrpc": "2.0", "result": "hi", "id": 1}
    response = send(srv, {"jsonrpc": "2.0", "method": "new_task", "id": 2, "params": {
        "passkey": pilot_key, "gridspec": "", "hostname": "h", "domain": "", "ifaces": [],
        "os": None, "cpu": 1, "gpu": 0, "memory": 1.0, "disk": 1.0, "time": 1.0}})
    assert response == {"jsonrpc": "2.0", "result": [], "id": 2}
    # without it, a pilot method needs a credential; with a wrong one, even echo refuses
    response = send(srv, {"jsonrpc": "2.0", "method": "new_task", "params": {}, "id": 3})
    assert_error(response, -32001, 3)
    response = send(srv, {"jsonrpc": "2.0", "method": "echo",
                          "params": {"value": 1, "passkey": "not-a-key"}, "id": 4})
    assert_error(response, -32001, 4)


def test_bearer_header_and_client(srv: ServerProcess, pilot_key: str) -> None:
    assert srv.client(pilot_key).call("new_task", cpu=1, memory=1.0, disk=1.0, time=1.0) == []
    answer = jsonrpc.request(srv.rpc_url, "echo", [1], passkey="wrong")
    assert_error(answer, -32001, 1)
