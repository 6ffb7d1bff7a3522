"""IceProd 2.3.2's reads that answered everything at once, bounded: past
``unpaged_max_rows`` (5 here) they are -32602 naming the option and the paginated method to
use instead, and ``public_get_all_config`` also stops at ``max_body_bytes`` of configs
(300,000 here). At or under the bound they answer in full.

The tests run in order on one server per database backend, each adding datasets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from iceprod_server.client import IceProdClient
from tests.compat.iceprod2 import Iceprod2Pilot
from tests.compat.iceprod2_client import JSONRPC, refused
from tests.compat.iceprod2_configs import iceprod2_config, iceprod2_task
from tests.support.datasets import wait_until
from tests.support.servers import ServerProcess

LIMIT = 5
MAX_BODY = 300_000


@dataclass
class World:
    srv: ServerProcess
    alice: JSONRPC
    ours: IceProdClient


@pytest.fixture(scope="module")
def world(module_server: Any, module_db_url: str) -> World:
    srv: ServerProcess = module_server(module_db_url, env={
        "ICEPROD_UNPAGED_MAX_ROWS": str(LIMIT), "ICEPROD_MAX_BODY_BYTES": str(MAX_BODY),
        "ICEPROD_MAX_RESETS": "20"})
    dep = srv.deployment
    return World(srv, JSONRPC(srv.rpc_url, passkey=dep.passkey("user", "alice")),
                 srv.client(dep.passkey("admin", "admin1")))


def _idle(name: str, **requirements: Any) -> dict[str, Any]:
    """A config whose task no pilot here claims (it needs 2 GPUs)."""
    return iceprod2_config(iceprod2_task(name, requirements={"gpu": 2, **requirements}))


def _made(w: World, dataset_id: str, n: int) -> None:
    wait_until(f"{n} tasks to be made", lambda: len(w.ours.call(
        "public_get_tasks", dataset_id=dataset_id)["items"]) == n)


def _over(error: dict[str, Any], use: str) -> None:
    assert error["code"] == -32602, error
    assert error["data"]["option"] == "unpaged_max_rows" and error["data"]["limit"] == LIMIT
    assert use in error["data"]["reason"], error


def test_all_config_stops_at_max_body_bytes(world: World) -> None:
    w = world
    for i in range(3):
        cfg = _idle(f"ip2-big{i}")
        cfg["steering"]["parameters"]["padding"] = "x" * 110_000
        w.alice.submit_dataset(cfg, description=f"big {i}")
    error = refused(w.alice.public_get_all_config)
    assert error["code"] == -32602 and error["data"]["option"] == "max_body_bytes", error
    assert "public_get_config" in error["data"]["reason"], error
    for dataset in w.ours.call("public_get_datasets")["items"]:
        config = w.alice.public_get_config(dataset["dataset_id"])
        assert len(config["steering"]["parameters"]["padding"]) == 110_000


def test_stat_rows_of_one_task(world: World) -> None:
    w = world
    w.alice.submit_dataset(iceprod2_config(iceprod2_task("ip2-retry")), description="retry")
    pilot = Iceprod2Pilot(w.srv.port, w.srv.deployment.passkey("pilot"))
    task_id = ""
    for attempt in range(LIMIT + 1):
        got = wait_until("the task to be claimed again", lambda: pilot.new_task(gpu=0))
        task_id = got[0]["options"]["task_id"]
        pilot.task_error(task_id, f"attempt {attempt} fails")
        if attempt == LIMIT - 1:
            assert len(w.alice.public_get_task_stats(task_id)) == LIMIT
    _over(refused(w.alice.public_get_task_stats, task_id=task_id), "public_get_task")


def test_task_ids(world: World) -> None:
    w = world
    five = w.alice.submit_dataset(_idle("ip2-five", memory=1.5), njobs=LIMIT)
    six = w.alice.submit_dataset(_idle("ip2-six", memory=1.75), njobs=LIMIT + 1)
    _made(w, five, LIMIT)
    _made(w, six, LIMIT + 1)
    assert len(w.alice.public_get_task_ids(five)) == LIMIT
    assert len(w.alice.public_get_tasks_by_name("ip2-five")) == LIMIT
    assert len(w.alice.public_get_tasks_by_requirements('"memory": 1.5')) == LIMIT
    _over(refused(w.alice.public_get_task_ids, six), "public_get_tasks")
    _over(refused(w.alice.public_get_tasks_by_name, task_name="ip2-six"), "public_get_tasks")
    _over(refused(w.alice.public_get_tasks_by_requirements, '"memory": 1.75'),
          "public_get_tasks")
    # the error says how many there are
    reason = refused(w.alice.public_get_task_ids, six)["data"]["reason"]
    assert f"dataset {six} has {LIMIT + 1} tasks" in reason, reason


def test_dataset_lists(world: World) -> None:
    w = world
    ids = [d["dataset_id"] for d in w.ours.call("public_get_datasets")["items"]]
    assert len(ids) == 6  # three big, the retried one, five and six
    _over(refused(w.alice.public_get_datasets_by_status, "processing"), "public_get_datasets")
    _over(refused(w.alice.public_get_all_dataset_completion),
          "public_get_dataset_completion")
    _over(refused(w.alice.public_get_all_config), "public_get_config")
    for dataset_id in ids[:2]:
        w.ours.call("suspend_dataset", dataset_id=dataset_id)
    assert sorted(w.alice.public_get_datasets_by_status("suspended")) == sorted(ids[:2])
