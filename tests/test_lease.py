"""Leases: a pilot that stops heartbeating loses its task to another pilot; one that keeps
calling ``stillrunning`` keeps it. The servers here run with a 2 second lease."""

from __future__ import annotations

import json
import time
from typing import Any

from iceprod_server.client import RPCError
from tests.support.datasets import claim_one, config, counts, offer, submit, wait_counts
from tests.support.jsonrpc import expect_error
from tests.support.servers import ServerProcess

LEASE = 2.0
ENV = {"ICEPROD_LEASE_SECONDS": str(LEASE), "ICEPROD_SCHEDULER_INTERVAL": "0.5"}


def _setup(server: Any, db_url: str) -> tuple[ServerProcess, Any, Any, Any, str]:
    srv: ServerProcess = server(db_url, env=ENV)
    key = srv.deployment.passkey("pilot")
    owner = srv.client(srv.deployment.passkey("user", "alice"))
    # two pilots sharing one passkey, told apart by their pilot_ref
    a = srv.client(key, pilot_ref="pilot-a", retries=0)
    b = srv.client(key, pilot_ref="pilot-b", retries=0)
    dataset_id = submit(owner, config(), njobs=1)
    return srv, owner, a, b, dataset_id


def test_lost_pilot_loses_its_task(server: Any, db_url: str) -> None:
    srv, _owner, a, b, dataset_id = _setup(server, db_url)
    wait_counts(srv.client(), dataset_id, {"queued": 1})
    # the lease starts when the server claims the task, after this moment: measuring from
    # here, a correct server can never look early
    claimed_at = time.monotonic()
    claimed = a.call("new_task", **offer())
    assert len(claimed) == 1, claimed
    task = claimed[0]["options"]
    task_id, attempt_a = task["task_id"], task["attempt"]

    # pilot A goes silent; B asks for work until the expired task is handed out again
    deadline = claimed_at + 30
    got: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not got:
        got = b.call("new_task", **offer())
        if not got:
            time.sleep(0.1)
    waited = time.monotonic() - claimed_at
    assert got, f"the task was not handed out again within 30 s of a {LEASE} s lease; " \
                f"its state: {srv.client().call('public_get_task', task_id=task_id)}"
    assert waited >= LEASE, f"the task was taken from A after {waited:.2f} s, " \
                            f"before its {LEASE} s lease ran out"
    again = got[0]["options"]
    assert again["task_id"] == task_id
    assert again["attempt"] > attempt_a

    # the loss counts as a failure, recorded with the reason
    info = srv.client().call("public_get_task", task_id=task_id)
    assert info["failures"] == 1, info
    lost = [at for at in info["attempts"] if at["error"]]
    assert len(lost) == 1 and "lost contact" in json.dumps(lost[0]["stats"]), info["attempts"]
    assert lost[0]["attempt"] == attempt_a

    # A's late calls are refused and change nothing
    try:
        assert a.call("stillrunning", task_id=task_id) is False
    except RPCError as e:
        assert e.code == -32004, e
    expect_error(-32004, a.call, "finish_task", task_id=task_id, stats={})
    expect_error(-32004, a.call, "finish_task", task_id=task_id, stats={},
                 attempt=attempt_a)
    expect_error(-32004, a.call, "task_error", task_id=task_id, error_info={})
    assert counts(srv.client(), dataset_id) == {"processing": 1}

    # B holds it now and completes it
    assert b.call("stillrunning", task_id=task_id) is True
    b.call("finish_task", task_id=task_id, stats={"hostname": "b"},
           attempt=again["attempt"])
    wait_counts(srv.client(), dataset_id, {"complete": 1}, timeout=5)
    expect_error(-32004, a.call, "finish_task", task_id=task_id, stats={})
    info = srv.client().call("public_get_task", task_id=task_id)
    assert info["status"] == "complete" and info["failures"] == 1
    assert [at["error"] for at in info["attempts"]] == [True, False]


def test_heartbeating_pilot_keeps_its_task(server: Any, db_url: str) -> None:
    srv, _owner, a, b, dataset_id = _setup(server, db_url)
    task = claim_one(a)["options"]
    task_id = task["task_id"]
    until = time.monotonic() + 3 * LEASE
    while time.monotonic() < until:
        assert a.call("stillrunning", task_id=task_id) is True
        assert b.call("new_task", **offer()) == [], "a heartbeating pilot's task was taken"
        time.sleep(LEASE / 4)
    assert counts(srv.client(), dataset_id) == {"processing": 1}
    a.call("finish_task", task_id=task_id, stats={"hostname": "a"},
           attempt=task["attempt"])
    wait_counts(srv.client(), dataset_id, {"complete": 1}, timeout=5)
    info = srv.client().call("public_get_task", task_id=task_id)
    assert info["failures"] == 0 and info["attempt"] == task["attempt"], info
