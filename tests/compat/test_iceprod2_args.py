"""Params as IceProd 2.3.2's client library sends them: named, with the passkey among them,
and the positional ones as a list under ``args``, bound in 2.3.2's order of the method's
params. An ``args`` that is not a list, that is longer than the method's params or that
gives a param also given by name is -32602 naming it, and every param bound from ``args``
is checked for type and size as a named one: a refused call stores nothing.

One server per database backend serves the module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from iceprod_server.client import IceProdClient
from tests.compat.iceprod2_client import JSONRPC, refused
from tests.support import jsonrpc
from tests.support.datasets import config, task, wait_until
from tests.support.servers import ServerProcess, http_get


@dataclass
class World:
    srv: ServerProcess
    key: str
    rpc: JSONRPC  # alice, the IceProd 2 way
    admin: IceProdClient


@pytest.fixture(scope="module")
def world(module_server: Any, module_db_url: str) -> World:
    srv: ServerProcess = module_server(module_db_url)
    key = srv.deployment.passkey("user", "alice")
    return World(srv, key, JSONRPC(srv.rpc_url, passkey=key),
                 srv.client(srv.deployment.passkey("admin", "admin1")))


def _raw(w: World, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """One request with exactly these params (the passkey added), the whole answer."""
    return jsonrpc.request(w.srv.rpc_url, method, {**params, "passkey": w.key})


def _stored(w: World) -> tuple[int, int]:
    """How many datasets exist, and how many audit entries: what a refusal must not
    change."""
    datasets = w.admin.call("public_get_datasets", limit=1000)["items"]
    audit = w.admin.call("list_audit_log", limit=1000)["items"]
    return len(datasets), len(audit)


def test_positional_args_bind_in_iceprod2_order(world: World) -> None:
    w = world
    cfg = config(task("only"))
    # submit_dataset(config, difplus, description, gridspec, njobs), all positional
    dataset_id = w.rpc.submit_dataset(cfg, "DIF plus of the positional test", "positional",
                                      "", 3)
    got = w.admin.call("public_get_dataset", dataset_id=dataset_id)
    assert (got["description"], got["njobs"], got["gridspec"]) == ("positional", 3, ""), got
    status, page = http_get(w.srv.port, f"/dataset/{dataset_id}")
    assert status == 200 and b"DIF plus of the positional test" in page

    # the usual mix: the config positional, the rest by name
    mixed = w.rpc.submit_dataset(cfg, njobs=2, description="mixed")
    got = w.admin.call("public_get_dataset", dataset_id=mixed)
    assert (got["description"], got["njobs"]) == ("mixed", 2), got

    # a read with its one param positional
    counts = wait_until("the three tasks to be counted", lambda: (
        c := w.rpc.public_get_number_of_tasks_in_each_state(dataset_id)) and
        sum(c.values()) == 3 and c)
    assert set(counts) <= {"idle", "waiting", "queued"}, counts


def test_args_on_the_pilot_methods(world: World) -> None:
    w = world
    w.rpc.submit_dataset(config(task("only")), njobs=1, description="pilot")
    pilot = JSONRPC(w.srv.rpc_url, passkey=w.srv.deployment.passkey("pilot"))
    claimed = wait_until("a task to claim", lambda: pilot.new_task(
        "", hostname="node1", cpu=1, gpu=0, memory=1.0, disk=1.0, time=1.0))
    task_id = claimed[0]["options"]["task_id"]
    assert pilot.stillrunning(task_id) is True
    pilot.finish_task(task_id, {"time_used": 1.0, "hostname": "node1"})
    assert w.admin.call("public_get_task", task_id=task_id)["status"] == "complete"
    assert pilot.stillrunning(task_id) is False


def test_args_that_is_not_a_list(world: World) -> None:
    w = world
    before = _stored(w)
    for args in ({"config": 1}, "a config", 5, None):
        answer = _raw(w, "submit_dataset", {"args": args, "njobs": 1})
        assert jsonrpc.error_code(answer) == -32602, answer
        problems = answer["error"]["data"]["problems"]
        assert any(p.startswith("args: expected an array") for p in problems), answer
    assert _stored(w) == before


def test_args_colliding_with_a_named_param(world: World) -> None:
    w = world
    before = _stored(w)
    error = refused(w.rpc.submit_dataset, config(task("a")), config=config(task("b")))
    assert error["code"] == -32602, error
    assert "args[0] and the named param config both give config" in \
        error["data"]["problems"], error
    # the third positional param of submit_dataset is 2.3.2's description
    error = refused(w.rpc.submit_dataset, config(), "", "d", description="again")
    assert "args[2] and the named param description both give description" in \
        error["data"]["problems"], error
    assert _stored(w) == before


def test_more_args_than_params(world: World) -> None:
    w = world
    error = refused(w.rpc.public_get_number_of_tasks_in_each_state, "a", "b")
    assert error["code"] == -32602, error
    assert error["data"]["problems"] == [
        "args: public_get_number_of_tasks_in_each_state takes at most 1 positional params, "
        "got 2"], error


def test_type_and_size_checks_apply_to_args(world: World) -> None:
    w = world
    before = _stored(w)
    # njobs is the fifth positional param in IceProd 2.3.2's order
    error = refused(w.rpc.submit_dataset, config(), "", "d", "", "ten")
    assert error["code"] == -32602 and any(
        p.startswith("njobs: expected integer") for p in error["data"]["problems"]), error
    # a description over its column (65,535 bytes), given positionally
    error = refused(w.rpc.submit_dataset, config(), "", "é" * 40_000)
    assert error["code"] == -32602 and any(
        p.startswith("description: at most 65535 bytes") for p in error["data"]["problems"]),\
        error
    # a number that JSON allows and a double does not hold, inside a positional config
    answer = jsonrpc.post(w.srv.rpc_url, '{"jsonrpc": "2.0", "id": 1, "method": '
                          '"submit_dataset", "params": {"args": [{"version": 3, "x": 1e999}],'
                          f' "passkey": "{w.key}"}}}}')
    error = answer.json()["error"]
    assert error["code"] == -32602 and "config.x" in str(error["data"]), error
    assert _stored(w) == before


def test_errors_reach_an_iceprod2_script_as_its_exception(world: World) -> None:
    """The 2.3.2 library raises ``Exception('Error %r' % error)``: the script sees the
    code and the reason in the text."""
    w = world
    with pytest.raises(Exception) as caught:
        w.rpc.public_get_number_of_tasks_in_each_state("00000000000000000000")
    text = str(caught.value)
    assert text.startswith("Error {") and "-32003" in text and \
        "no dataset 00000000000000000000" in text, text
