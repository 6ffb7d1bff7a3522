"""A property test over ``POST /jsonrpc``: whatever the body and whoever sends it, the answer
is a valid JSON-RPC response (or an empty 200 for notifications), never an HTTP 5xx and
never an internal error, and a request that is refused leaves every table as it was.

Bodies are generated from the method registry: calls of every method with params of every
JSON shape and size (numbers beyond 64 bits, 1e999, NaN, lone surrogates, long strings,
deep nesting), batches and notifications, JSON that is not a request, text that is not
JSON and bytes that are not UTF-8; each sent with no credential, a bad key, or the key of a
pilot, a user, an admin or a site.

``make test`` runs ``FUZZ_EXAMPLES`` examples per database (``ICEPROD_TEST_FUZZ_EXAMPLES``,
default 1500); ``make soak`` runs 100,000.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iceprod_server.rpc import methods
from iceprod_server.rpc.registry import REGISTRY
from tests.support import databases, jsonrpc
from tests.support.datasets import config, submit, task, wait_counts
from tests.support.servers import ServerProcess

FUZZ_EXAMPLES = int(os.environ.get("ICEPROD_TEST_FUZZ_EXAMPLES", "1500"))
MAX_BODY = 4_000_000
ROLES = ("anonymous", "bad key", "pilot", "user", "admin", "site")
# what a refused request may answer; -32603 (internal error) is a bug
CODES = {-32700, -32600, -32601, -32602, -32001, -32002, -32003, -32004}

methods.load()
METHOD_NAMES = sorted(REGISTRY)


@dataclass
class World:
    srv: ServerProcess
    keys: dict[str, str]
    site: tuple[str, str]
    ids: list[str]


@pytest.fixture(scope="module")
def world(module_server: Any, module_db_url: str) -> World:
    # a scheduler that runs only when woken, so no table changes behind the test's back
    srv: ServerProcess = module_server(module_db_url, env={
        "ICEPROD_SCHEDULER_INTERVAL": "100000", "ICEPROD_MAX_BATCH_LENGTH": "20",
        "ICEPROD_MAX_BODY_BYTES": str(MAX_BODY)})
    dep = srv.deployment
    keys = {"pilot": dep.passkey("pilot"), "user": dep.passkey("user", "alice"),
            "admin": dep.passkey("admin", "admin1")}
    fields = dict(line.split("=", 1) for line in
                  dep.cli("add-site", "peer-site").stdout.split() if "=" in line)
    user = srv.client(keys["user"])
    dataset_id = submit(user, config(task("a"), task("b", depends=["a"])), njobs=2)
    wait_counts(srv.client(), dataset_id, {"queued": 2, "idle": 2})
    tasks = srv.client().call("public_get_tasks", dataset_id=dataset_id)["items"]
    ids = [dataset_id, *(t["task_id"] for t in tasks), tasks[0]["job_id"]]
    return World(srv, keys, (fields["site_id"], fields["site_key"]), ids)


def snapshot(url: str) -> dict[str, list[str]]:
    """Every row of every table, as text, sorted."""
    with databases.connect(url) as conn:
        tables = sorted(sqlalchemy.inspect(conn).get_table_names())
        return {t: sorted(repr(tuple(r)) for r in
                          conn.execute(sqlalchemy.text(f"SELECT * FROM {t}")))
                for t in tables}


# -- strategies ---------------------------------------------------------------------------

SPECIALS = st.sampled_from([
    10**23, -(10**23), 2**63, 2**63 - 1, -(2**63), 2**64, 0, -1, 1e308, 1e-308,
    float("inf"), float("-inf"), float("nan"), "", "\ud800", "g\udfff", "x" * 300,
    "é" * 70_000, "' OR 1=1 --", "../../etc/passwd", "\x00", "%s%n", "😀" * 200,
    {"__jsonclass__": ["datetime", "not a date"]}, {"__jsonclass__": ["bytes", "!!"]},
    {"__jsonclass__": ["date", "2024-01-01"]},
])
SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(alphabet=st.characters(codec=None, categories=None), max_size=20)
           | SPECIALS)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                      max_leaves=12)


@st.composite
def params_for(draw: st.DrawFn, name: str, ids: list[str]) -> Any:
    method = REGISTRY.get(name)
    names = list(method.param_names) if method else []
    value = VALUES | st.sampled_from(ids)
    if draw(st.booleans()):
        keys = draw(st.lists(st.sampled_from(names) if names else st.text(max_size=8),
                             max_size=len(names) + 1, unique=True))
        params: Any = {k: draw(value) for k in keys}
        if draw(st.integers(0, 9)) == 0:
            params[draw(st.text(max_size=8))] = draw(value)
        return params
    return draw(st.lists(value, max_size=len(names) + 1))


@st.composite
def call(draw: st.DrawFn, ids: list[str]) -> Any:
    name = draw(st.sampled_from(METHOD_NAMES) | st.text(max_size=12))
    req: dict[str, Any] = {"jsonrpc": "2.0", "method": name}
    shape = draw(st.integers(0, 19))
    if shape != 0:
        req["params"] = draw(params_for(name, ids))
    if shape != 1:
        req["id"] = draw(st.integers(-5, 10**6) | st.text(max_size=6) | st.none()
                         | st.just(1e999) | st.floats())
    if shape == 2:
        req["jsonrpc"] = draw(SCALARS)
    if shape == 3:
        req[draw(st.text(max_size=6))] = draw(SCALARS)
    if shape == 4:
        return draw(VALUES)  # JSON that is not a request object
    return req


@st.composite
def body(draw: st.DrawFn, ids: list[str]) -> bytes:
    kind = draw(st.integers(0, 19))
    if kind == 0:
        return draw(st.binary(max_size=64))
    if kind == 1:
        return draw(st.text(max_size=64)).encode("utf-8", "surrogatepass")
    if kind == 2:
        depth = draw(st.integers(90, 3000))
        inner = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "echo", "params": []})
        return ("[" * depth + inner + "]" * draw(st.sampled_from([0, depth]))).encode()
    if kind in (3, 4, 5):
        payload: Any = draw(st.lists(call(ids), min_size=0, max_size=25))
    else:
        payload = draw(call(ids))
    return json.dumps(payload, allow_nan=True).encode("utf-8", "surrogatepass")


# -- the property --------------------------------------------------------------------------

def headers_for(w: World, role: str) -> dict[str, str]:
    if role == "bad key":
        return {"Authorization": "Bearer not-a-key"}
    if role in w.keys:
        return {"Authorization": f"Bearer {w.keys[role]}", "X-IceProd-Pilot": "fuzz"}
    return {}


def with_site(w: World, data: bytes) -> bytes:
    """The site's credentials as IceProd 2's legacy params, in every request object."""
    try:
        payload = json.loads(data)
    except (ValueError, RecursionError):
        return data
    for req in payload if isinstance(payload, list) else [payload]:
        if isinstance(req, dict) and isinstance(req.get("params"), dict):
            req["params"].update(site_id=w.site[0], passkey=w.site[1])
    return json.dumps(payload, allow_nan=True).encode("utf-8", "surrogatepass")


def check_response(obj: Any) -> bool:
    """Whether ``obj`` is a valid response object; returns whether it is an error."""
    assert isinstance(obj, dict), obj
    assert obj.get("jsonrpc") == "2.0" and "id" in obj, obj
    assert ("result" in obj) != ("error" in obj), obj
    if "error" in obj:
        err = obj["error"]
        assert isinstance(err.get("code"), int) and isinstance(err.get("message"), str), obj
        assert err["code"] in CODES, f"unexpected error code: {obj}"
        return True
    return False


def notifications_only(data: bytes) -> bool:
    try:
        payload = json.loads(data)
    except (ValueError, RecursionError):
        return False
    reqs = payload if isinstance(payload, list) and payload else [payload]
    return all(isinstance(r, dict) and "id" not in r for r in reqs)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=False,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture,
                                 HealthCheck.filter_too_much])
@given(data=st.data())
def test_every_body_gets_a_valid_answer(world: World, data: st.DataObject) -> None:
    w = world
    sent = data.draw(body(w.ids), label="body")
    role = data.draw(st.sampled_from(ROLES), label="role")
    if role == "site":
        sent = with_site(w, sent)
    before = snapshot(w.srv.db_url)
    answer = jsonrpc.post(w.srv.rpc_url, sent, headers=headers_for(w, role))
    if len(sent) > MAX_BODY:
        assert answer.status == 413, f"HTTP {answer.status} for a body over the limit"
        return
    assert answer.status == 200, f"HTTP {answer.status}: {answer.body[:300]!r}"
    if not answer.body:
        assert notifications_only(sent), "an empty answer to a request with an id"
        return
    decoded = json.loads(answer.body)
    responses = decoded if isinstance(decoded, list) else [decoded]
    assert responses, "an empty batch answer"
    refused = [check_response(r) for r in responses]
    if all(refused) and not notifications_only(sent):
        assert snapshot(w.srv.db_url) == before, "a refused request changed the database"
