"""Values that JSON allows and the server cannot carry: every one a JSON-RPC error, never
an HTTP 500, and nothing stored.

- nesting deeper than the documented limit: -32700;
- ``NaN`` / ``Infinity`` (not JSON): -32700; ``1e999`` (read as infinity) in params: -32602;
- integers beyond 64 bits: -32602;
- strings longer than their column, or that UTF-8 cannot encode: -32602 naming the param;
- a batch longer than ``max_batch_length``: one -32600 error;
- a value stored before these checks (an infinity in SQLite) does not break the reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support import databases, jsonrpc
from tests.support.datasets import claim_one, config, submit, task, wait_counts
from tests.support.servers import ServerProcess

MAX_BATCH = 50


@dataclass
class Setup:
    srv: ServerProcess
    admin: str
    user: str
    pilot: str
    dataset_id: str


@pytest.fixture(scope="module")
def setup(module_server: Any, module_db_url: str) -> Setup:
    srv: ServerProcess = module_server(module_db_url,
                                       env={"ICEPROD_MAX_BATCH_LENGTH": str(MAX_BATCH)})
    admin = srv.deployment.passkey("admin", "admin1")
    user = srv.deployment.passkey("user", "alice")
    pilot = srv.deployment.passkey("pilot")
    dataset_id = submit(srv.client(user), config(task("a")), njobs=4)
    wait_counts(srv.client(), dataset_id, {"queued": 4})
    return Setup(srv, admin, user, pilot, dataset_id)


def raw(s: Setup, body: str, key: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    answer = jsonrpc.post(s.srv.rpc_url, body, headers=headers)
    assert answer.status == 200, f"HTTP {answer.status}: {answer.body[:300]!r}"
    return answer.json()


def call_text(method: str, params_text: str) -> str:
    """A request whose params are given as JSON text (to write 1e999 or a lone surrogate)."""
    return f'{{"jsonrpc": "2.0", "id": 7, "method": "{method}", "params": {params_text}}}'


def refused(response: Any, code: int, *words: str) -> None:
    assert isinstance(response, dict) and "error" in response, response
    assert response["error"]["code"] == code, response
    text = json.dumps(response["error"]).lower()
    for word in words:
        assert word.lower() in text, f"{word!r} not in {response['error']}"


def test_deep_nesting_is_a_parse_error(setup: Setup) -> None:
    refused(raw(setup, "[" * 1000), -32700)
    refused(raw(setup, "[" * 1000 + "]" * 1000), -32700)
    deep = "[" * 980 + "1" + "]" * 980
    refused(raw(setup, call_text("echo", f"[{deep}]")), -32700, "nested")
    # a moderately nested value still works
    value: Any = 1
    for _ in range(50):
        value = [value]
    assert raw(setup, json.dumps({"jsonrpc": "2.0", "id": 1, "method": "echo",
                                  "params": [value]}))["result"] == value


def test_nan_and_infinity(setup: Setup) -> None:
    for text in ("NaN", "Infinity", "-Infinity"):
        refused(raw(setup, call_text("echo", f"[{text}]")), -32700)
    refused(raw(setup, call_text("echo", "[[1e999]]")), -32602, "value", "finite")
    refused(raw(setup, call_text("echo", '{"value": {"a": -1e999}}')), -32602, "value.a")
    # an id that JSON cannot carry back is an invalid request (answered with a null id)
    response = raw(setup, '{"jsonrpc": "2.0", "id": 1e999, "method": "echo", "params": [1]}')
    refused(response, -32600)
    assert response["id"] is None


def test_infinity_is_never_stored(setup: Setup) -> None:
    admin = setup.srv.client(setup.admin)
    groups = admin.call("list_groups")
    keys = admin.call("list_passkeys")
    audit = admin.call("list_audit_log", limit=1000)["items"]
    priority = admin.call("public_get_dataset", dataset_id=setup.dataset_id)["priority"]
    refused(raw(setup, call_text("create_group", '{"name": "inf", "priority": 1e999}'),
                setup.admin), -32602, "priority")
    refused(raw(setup, call_text("issue_passkey", '{"role": "pilot", "expires": 1e999}'),
                setup.admin), -32602, "expires")
    refused(raw(setup, call_text("set_dataset_priority",
                                 f'{{"dataset_id": "{setup.dataset_id}", "priority": 1e999}}'),
                setup.user), -32602, "priority")
    assert admin.call("list_groups") == groups
    assert admin.call("list_passkeys") == keys, "a refused issue_passkey stored a key"
    assert admin.call("list_audit_log", limit=1000)["items"] == audit
    assert admin.call("public_get_dataset",
                      dataset_id=setup.dataset_id)["priority"] == priority

    pilot = setup.srv.client(setup.pilot, pilot_ref="inf")
    task_id = claim_one(pilot)["options"]["task_id"]
    refused(raw(setup, call_text("finish_task",
                                 f'{{"task_id": "{task_id}", "stats": {{"time_used": 1e999}}}}'),
                setup.pilot), -32602, "stats.time_used")
    refused(raw(setup, call_text("task_error",
                                 f'{{"task_id": "{task_id}", "error_info": {{"t": [1e999]}}}}'),
                setup.pilot), -32602, "error_info")
    public = setup.srv.client()
    assert public.call("public_get_task", task_id=task_id)["status"] == "processing"
    public.call("public_get_task_stats", dataset_id=setup.dataset_id)
    # the pilot's honest report is still accepted
    pilot.call("finish_task", task_id=task_id, stats={"time_used": 12.5})
    assert public.call("public_get_task", task_id=task_id)["status"] == "complete"


def test_stored_infinity_does_not_break_reads(setup: Setup) -> None:
    if databases.backend_of(setup.srv.db_url) != "sqlite":
        pytest.skip("MariaDB columns cannot hold an infinity or NaN")
    admin = setup.srv.client(setup.admin)
    admin.call("create_group", name="stored-inf", priority=2.0)
    pilot = setup.srv.client(setup.pilot, pilot_ref="stored")
    task_id = claim_one(pilot)["options"]["task_id"]
    pilot.call("finish_task", task_id=task_id, stats={"time_used": 3.0})
    # values as an older server let them in
    with databases.connect(setup.srv.db_url) as conn:
        import sqlalchemy

        conn.execute(sqlalchemy.text("UPDATE groups SET priority = :p WHERE name = 'stored-inf'"),
                     {"p": float("inf")})
        conn.execute(sqlalchemy.text("UPDATE task_stats SET stats = :s WHERE task_id = :t"),
                     {"s": '{"time_used": Infinity, "n": NaN}', "t": task_id})
        conn.commit()
    groups = {g["name"]: g for g in admin.call("list_groups")}
    assert groups["stored-inf"]["priority"] is None
    public = setup.srv.client()
    assert public.call("public_get_task", task_id=task_id)["status"] == "complete"
    public.call("public_get_task_stats", dataset_id=setup.dataset_id)


@pytest.mark.parametrize("method, params, words", [
    ("new_task", '{"cpu": 100000000000000000000000}', ("cpu", "64 bits")),
    ("public_get_tasks", '{"job_index": 100000000000000000000000}', ("job_index", "64 bits")),
    ("list_audit_log", '{"before": -100000000000000000000000}', ("before", "64 bits")),
    ("echo", "[18446744073709551616]", ("value", "64 bits")),
    ("new_task", '{"memory": 1' + "0" * 400 + "}", ("memory",)),
])
def test_integers_beyond_64_bits(setup: Setup, method: str, params: str,
                                 words: tuple[str, ...]) -> None:
    refused(raw(setup, call_text(method, params), setup.admin), -32602, *words)


@pytest.mark.parametrize("method, params, word", [
    ("update_pilot", {"pilot_id": "p1", "hostname": "h" * 100_000}, "hostname"),
    ("create_group", {"name": "long", "description": "d" * 100_000}, "description"),
    ("issue_passkey", {"role": "pilot", "description": "d" * 100_000}, "description"),
    ("create_group", {"name": "n" * 129}, "name"),
    ("submit_dataset", {"config": config(task("a")), "description": "é" * 40_000, "njobs": 1},
     "description"),
    ("update_pilot", {"pilot_id": "p" * 65}, "pilot_id"),
])
def test_strings_longer_than_their_column(setup: Setup, method: str, params: dict[str, Any],
                                          word: str) -> None:
    before = databases.row_counts(setup.srv.db_url)
    response = jsonrpc.request(setup.srv.rpc_url, method, params, passkey=setup.admin)
    refused(response, -32602, word, "at most")
    assert databases.row_counts(setup.srv.db_url) == before


@pytest.mark.parametrize("method, params, word", [
    ("create_group", '{"name": "g\\ud800"}', "name"),
    ("update_pilot", '{"pilot_id": "p2", "hostname": "\\udfff"}', "hostname"),
    ("echo", '{"value": {"k\\ud800": 1}}', "value"),
    ("finish_task", '{"task_id": "x", "stats": {"a": "\\ud800"}}', "stats.a"),
])
def test_lone_surrogates(setup: Setup, method: str, params: str, word: str) -> None:
    before = databases.row_counts(setup.srv.db_url)
    refused(raw(setup, call_text(method, params), setup.admin), -32602, word, "unicode")
    assert databases.row_counts(setup.srv.db_url) == before


def test_batch_length_is_limited(setup: Setup) -> None:
    calls = [{"jsonrpc": "2.0", "id": i, "method": "echo", "params": [i]}
             for i in range(MAX_BATCH + 1)]
    response = raw(setup, json.dumps(calls))
    assert isinstance(response, dict), "a batch over the limit gets one error, not a list"
    refused(response, -32600, str(MAX_BATCH))
    answers = raw(setup, json.dumps(calls[:MAX_BATCH]))
    assert sorted(a["result"] for a in answers) == list(range(MAX_BATCH))


@pytest.mark.parametrize("params, code, word", [
    ({"role": "pilot", "expires": -5}, -32602, "expiry"),
    ({"role": "pilot", "lease": 0}, -32602, "lease"),
    ({"role": "user"}, -32602, "user"),
    ({"role": "admin", "username": "alice"}, -32602, "admin"),
    ({"role": "user", "username": "nobody-at-all"}, -32003, "nobody-at-all"),
    ({"role": "root"}, -32602, "role"),
])
def test_a_refused_issue_passkey_stores_nothing(setup: Setup, params: dict[str, Any],
                                                code: int, word: str) -> None:
    """Refusals that reach the method (not only the checks before it): no key, no audit
    entry, the passkeys table as it was."""
    admin = setup.srv.client(setup.admin)
    keys = admin.call("list_passkeys")
    audit = admin.call("list_audit_log", limit=1000)["items"]
    rows = databases.row_counts(setup.srv.db_url)
    response = jsonrpc.request(setup.srv.rpc_url, "issue_passkey", params,
                               passkey=setup.admin)
    refused(response, code, word)
    assert admin.call("list_passkeys") == keys, "a refused issue_passkey stored a key"
    assert admin.call("list_audit_log", limit=1000)["items"] == audit
    assert databases.row_counts(setup.srv.db_url) == rows
