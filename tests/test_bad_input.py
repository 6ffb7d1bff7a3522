"""Bad input gets the right error, says what was wrong, and changes nothing.

Before and after each bad request the test takes a snapshot: the row count of every table,
the datasets by status, and the stored config of an existing dataset. They must be equal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support import databases, jsonrpc
from tests.support.datasets import config, submit, task, wait_counts
from tests.support.servers import ServerProcess

MAX_BODY = 200_000


@dataclass
class Setup:
    server: ServerProcess
    user_key: str
    pilot_key: str
    dataset_id: str
    task_id: str


@pytest.fixture(scope="module")
def setup(module_server: Any, module_db_url: str) -> Setup:
    srv: ServerProcess = module_server(module_db_url,
                                       env={"ICEPROD_MAX_BODY_BYTES": str(MAX_BODY)})
    user_key = srv.deployment.passkey("user", "alice")
    pilot_key = srv.deployment.passkey("pilot")
    dataset_id = submit(srv.client(user_key), config(task("a"), task("b", depends=["a"])),
                        njobs=2)
    # let the scheduler settle, so that the only changes left are the ones we cause
    wait_counts(srv.client(), dataset_id, {"queued": 2, "idle": 2})
    first = srv.client().call("public_get_tasks", dataset_id=dataset_id, limit=1)["items"][0]
    return Setup(srv, user_key, pilot_key, dataset_id, first["task_id"])


def snapshot(s: Setup) -> dict[str, Any]:
    client = s.server.client()
    return {
        "rows": databases.row_counts(s.server.db_url),
        "datasets": client.call("public_get_datasets_by_status"),
        "config": client.call("public_get_dataset_config", dataset_id=s.dataset_id),
        "counts": client.call("public_get_number_of_tasks_in_each_state",
                              dataset_id=s.dataset_id),
        "dataset": {k: v for k, v in client.call("public_get_dataset",
                                                 dataset_id=s.dataset_id).items()
                    if k not in ("status_changed",)},
    }


def rpc(s: Setup, method: str, params: Any, key: str | None = None) -> dict[str, Any]:
    return jsonrpc.request(s.server.rpc_url, method, params, passkey=key or s.user_key)


def assert_refused(response: dict[str, Any], code: int, *words: str) -> dict[str, Any]:
    assert "error" in response, f"expected error {code}, got {response}"
    error: dict[str, Any] = response["error"]
    assert error["code"] == code, f"expected error {code}, got {error}"
    assert isinstance(error.get("data"), dict) and error["data"], \
        f"error {code} without data saying what was wrong: {error}"
    text = json.dumps(error["data"]).lower()
    for word in words:
        assert word.lower() in text, f"{word!r} not mentioned in {error['data']}"
    return error


def _good() -> dict[str, Any]:
    return config(task("gen"), task("sim", depends=["gen"]))


def _with(**changes: Any) -> dict[str, Any]:
    cfg = _good()
    cfg.update(changes)
    return cfg


def _task_with(index: int, **changes: Any) -> dict[str, Any]:
    cfg = _good()
    cfg["tasks"][index].update(changes)
    return cfg


def _without_name() -> dict[str, Any]:
    cfg = _good()
    del cfg["tasks"][0]["name"]
    return cfg


INVALID_CONFIGS = {
    "no tasks key": ({k: v for k, v in _good().items() if k != "tasks"}, "tasks"),
    "empty task list": (_with(tasks=[]), "tasks"),
    "tasks not a list": (_with(tasks={"gen": {}}), "tasks"),
    "task without a name": (_without_name(), "name"),
    "duplicate task names": (_task_with(1, name="gen"), "duplicate"),
    "unknown dependency": (_task_with(1, depends=["nosuchtask"]), "nosuchtask"),
    "dependency on a later task": (_task_with(0, depends=["sim"]), "later"),
    "negative memory": (_task_with(0, requirements={"memory": -4}), "memory"),
    "gpu of the wrong type": (_task_with(0, requirements={"gpu": [1]}), "gpu"),
    "unknown version": (_with(version=7), "version"),
    "config not an object": ([1, 2, 3], "config"),
    "config text that is not JSON": ('{"version": 3, "tasks": [', "json"),
    "config text of an invalid config": (json.dumps(_with(tasks=[])), "tasks"),
    "bad data movement": (_task_with(0, data=[{"remote": "x", "local": "y",
                                               "type": "permanent",
                                               "movement": "sideways"}]), "movement"),
}


@pytest.mark.parametrize("case", sorted(INVALID_CONFIGS))
def test_invalid_config_is_refused_and_nothing_stored(setup: Setup, case: str) -> None:
    cfg, word = INVALID_CONFIGS[case]
    before = snapshot(setup)
    response = rpc(setup, "submit_dataset", {"config": cfg, "description": case, "njobs": 3})
    error = assert_refused(response, -32602, word)
    problems = error["data"].get("problems")
    assert isinstance(problems, list) and problems, \
        f"an invalid config must list its problems in data.problems: {error}"
    # and the same config may not replace a dataset's good one
    response = rpc(setup, "update_dataset_config",
                   {"dataset_id": setup.dataset_id, "config": cfg})
    assert_refused(response, -32602, word)
    assert snapshot(setup) == before


BAD_CALLS: dict[str, tuple[str, Any, int, tuple[str, ...]]] = {
    # name: (method, params, code, words the error data must mention)
    "njobs of the wrong type": ("submit_dataset", {"config": _good(), "njobs": "ten"},
                                -32602, ("njobs",)),
    "zero jobs": ("submit_dataset", {"config": _good(), "njobs": 0}, -32602, ("njobs",)),
    "negative jobs": ("submit_dataset", {"config": _good(), "njobs": -3}, -32602, ("njobs",)),
    "unknown param": ("submit_dataset", {"config": _good(), "njobs": 1, "jobs": 2},
                      -32602, ("jobs",)),
    "missing config": ("submit_dataset", {"njobs": 1}, -32602, ("config",)),
    "priority of the wrong type": ("submit_dataset",
                                   {"config": _good(), "njobs": 1, "priority": "high"},
                                   -32602, ("priority",)),
    "stat_keys not a list": ("submit_dataset",
                             {"config": _good(), "njobs": 1, "stat_keys": "time"},
                             -32602, ("stat_keys",)),
    "unknown method": ("submit_datasets", {"config": _good(), "njobs": 1}, -32601,
                       ("submit_datasets",)),
    "suspend an unknown dataset": ("suspend_dataset", {"dataset_id": "ffffffffffffffffffff"},
                                   -32003, ()),
    "dataset id of the wrong type": ("suspend_dataset", {"dataset_id": {"id": 1}}, -32602,
                                     ("dataset_id",)),
    "negative priority": ("set_dataset_priority", {"dataset_id": "<dataset>",
                                                   "priority": -1}, -32602, ("priority",)),
    "task_ids not a list": ("reset_tasks", {"task_ids": "<task>"}, -32602, ("task_ids",)),
    "bulk action without ids or filter": ("reset_tasks", {}, -32602, ()),
    "bulk action with an unknown status": ("suspend_tasks", {"dataset_id": "<dataset>",
                                                             "status": "sleeping"},
                                           -32602, ("status",)),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_call_changes_nothing(setup: Setup, case: str) -> None:
    method, params, code, words = BAD_CALLS[case]
    params = json.loads(json.dumps(params).replace("<dataset>", setup.dataset_id)
                        .replace("<task>", setup.task_id))
    before = snapshot(setup)
    assert_refused(rpc(setup, method, params), code, *words)
    assert snapshot(setup) == before


PILOT_CALLS: dict[str, tuple[str, Any, int]] = {
    "cpu of the wrong type": ("new_task", {"cpu": "four"}, -32602),
    "negative memory offered": ("new_task", {"cpu": 1, "memory": -1.0}, -32602),
    "finish an unknown task": ("finish_task", {"task_id": "ffffffffffffffffffff",
                                               "stats": {}}, -32003),
    "finish a task not claimed": ("finish_task", {"task_id": "<task>", "stats": {}}, -32004),
    "error on a task not claimed": ("task_error", {"task_id": "<task>", "error_info": {}},
                                    -32004),
    "stats not an object": ("finish_task", {"task_id": "<task>", "stats": [1]}, -32602),
    "log for a task not claimed": ("upload_logfile", {"task": "<task>", "name": "stdout",
                                                      "data": "x"}, -32004),
    "log with a bad name": ("upload_logfile", {"task": "<task>", "name": "../../etc/passwd",
                                               "data": "x"}, -32602),
}


@pytest.mark.parametrize("case", sorted(PILOT_CALLS))
def test_bad_pilot_call_changes_nothing(setup: Setup, case: str) -> None:
    method, params, code = PILOT_CALLS[case]
    params = json.loads(json.dumps(params).replace("<task>", setup.task_id))
    before = snapshot(setup)
    assert_refused(rpc(setup, method, params, key=setup.pilot_key), code)
    assert snapshot(setup) == before


def test_malformed_json_changes_nothing(setup: Setup) -> None:
    before = snapshot(setup)
    good = json.dumps({"jsonrpc": "2.0", "method": "submit_dataset", "id": 1,
                       "params": {"config": _good(), "njobs": 1}})
    for body in (good[:-1], good.replace(":", "=", 1), "\x00\xff", "",
                 '{"jsonrpc": "2.0", "method": "echo", "params": [NaN], "id": 1}'):
        answer = jsonrpc.post(setup.server.rpc_url, body,
                              headers={"Authorization": f"Bearer {setup.user_key}"})
        assert answer.status == 200
        response = answer.json()
        assert response["error"]["code"] in (-32700, -32600), (body[:40], response)
        assert response["id"] is None
    # a batch with broken JSON anywhere is refused whole: its good half is not run either
    answer = jsonrpc.post(setup.server.rpc_url, "[" + good + ", {]",
                          headers={"Authorization": f"Bearer {setup.user_key}"})
    assert answer.json()["error"]["code"] == -32700
    assert snapshot(setup) == before


def test_oversized_body_changes_nothing(setup: Setup) -> None:
    before = snapshot(setup)
    big = _good()
    big["description"] = "x" * (MAX_BODY + 10)
    body = json.dumps({"jsonrpc": "2.0", "method": "submit_dataset", "id": 1,
                       "params": {"config": big, "njobs": 1}})
    answer = jsonrpc.post(setup.server.rpc_url, body,
                          headers={"Authorization": f"Bearer {setup.user_key}"})
    assert answer.status == 413, (answer.status, answer.body[:200])
    assert snapshot(setup) == before


def test_bad_request_in_a_batch_leaves_the_rest(setup: Setup) -> None:
    before = snapshot(setup)
    answer = jsonrpc.post(setup.server.rpc_url, json.dumps([
        {"jsonrpc": "2.0", "method": "submit_dataset", "id": 1,
         "params": {"config": _with(tasks=[]), "njobs": 1}},
        {"jsonrpc": "2.0", "method": "public_get_datasets_by_status", "id": 2},
        {"jsonrpc": "2.0", "method": "submit_dataset", "id": 3, "params": {"njobs": "x"}},
    ]), headers={"Authorization": f"Bearer {setup.user_key}"})
    by_id = {r["id"]: r for r in answer.json()}
    assert by_id[1]["error"]["code"] == -32602
    assert by_id[2]["result"] == before["datasets"]
    assert by_id[3]["error"]["code"] == -32602
    assert snapshot(setup) == before
