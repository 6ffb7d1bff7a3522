"""``finish_task`` calls that arrive together are committed together (one unit of work
for the group), and each caller still gets its own answer: a refused call (another pilot's
task, a task that does not exist, a repeat) does not spoil the calls it was grouped with.
On SQLite and on MariaDB, through real HTTP calls into a server in this process (to read
how the calls were grouped)."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

import pytest

from iceprod_server.client import IceProdClient, RPCError
from tests.support import databases
from tests.support.datasets import claim_one, config, submit, task, wait_counts
from tests.support.inprocess import in_process_server
from tests.support.servers import Deployment

PILOTS = 40


@pytest.fixture
def deployment(db_url: str, tmp_path: Path) -> Deployment:
    return Deployment.init(tmp_path / "data", db_url)


def test_concurrent_finishes_are_grouped_and_answered_one_by_one(
        deployment: Deployment) -> None:
    user_key = deployment.passkey("user", "alice")
    pilot_key = deployment.passkey("pilot")
    with in_process_server(deployment.data_dir, {"db_threads": 4}) as server:
        owner = IceProdClient(server.url, passkey=user_key)
        dataset_id = submit(owner, config(task("a")), njobs=PILOTS)
        wait_counts(owner, dataset_id, {"queued": PILOTS})
        pilots = [IceProdClient(server.url, passkey=pilot_key, pilot_ref=f"p{i}", retries=0)
                  for i in range(PILOTS)]
        task_ids = [claim_one(p)["options"]["task_id"] for p in pilots]
        assert len(set(task_ids)) == PILOTS

        def finish(i: int) -> Any:
            calls: list[tuple[IceProdClient, str]] = [(pilots[i], task_ids[i])]
            if i % 8 == 0:  # the next pilot's task: not this pilot's claim
                calls.append((pilots[i], task_ids[(i + 1) % PILOTS]))
            if i % 10 == 0:
                calls.append((pilots[i], "no-such-task"))
            out = []
            for client, task_id in calls:
                try:
                    out.append(client.call("finish_task", task_id=task_id,
                                           stats={"time_used": float(i)}))
                except RPCError as e:
                    out.append(e.code)
            return out

        assert server.services is not None
        batcher = server.services.finishes
        before_groups, before_calls = batcher.groups, batcher.calls
        with concurrent.futures.ThreadPoolExecutor(PILOTS) as pool:
            answers = list(pool.map(finish, range(PILOTS)))
        groups, calls = batcher.groups - before_groups, batcher.calls - before_calls
        # a repeat by the same claim succeeds and changes nothing
        repeat = pilots[0].call("finish_task", task_id=task_ids[0], stats={})
        final = owner.call("public_get_number_of_tasks_in_each_state", dataset_id=dataset_id)

    for i, out in enumerate(answers):
        assert out[0] == {"task_id": task_ids[i], "status": "complete", "repeated": False}, out
        rest = out[1:]
        if i % 8 == 0:
            # the other pilot's task was either still processing (refused) or already
            # complete under the other pilot's claim (refused too)
            assert rest.pop(0) == -32004, out
        if i % 10 == 0:
            assert rest.pop(0) == -32003, out
    assert repeat["repeated"] is True
    assert final == {"complete": PILOTS}
    assert databases.scalar(deployment.db_url, "SELECT COUNT(*) FROM task_stats") == PILOTS
    extra = sum(1 for i in range(PILOTS) if i % 8 == 0) + sum(
        1 for i in range(PILOTS) if i % 10 == 0)
    assert calls == PILOTS + extra
    assert groups < calls, f"{calls} calls in {groups} groups: none were grouped"


def test_one_group_judges_each_call_against_the_ones_before(deployment: Deployment) -> None:
    """A group holding the same finish twice, another pilot's finish of a task and a task
    that does not exist: the first finish counts, its repeat is a repeat, the others are
    refused, and only one stat row is written."""
    from iceprod_server.db import tasks
    from iceprod_server.errors import Conflict, NotFound

    user_key = deployment.passkey("user", "alice")
    pilot_key = deployment.passkey("pilot")
    with in_process_server(deployment.data_dir, scheduler=True) as server:
        owner = IceProdClient(server.url, passkey=user_key)
        dataset_id = submit(owner, config(task("a")), njobs=2)
        wait_counts(owner, dataset_id, {"queued": 2})
        first = IceProdClient(server.url, passkey=pilot_key, pilot_ref="first")
        other = IceProdClient(server.url, passkey=pilot_key, pilot_ref="other")
        mine = claim_one(first)["options"]["task_id"]
        theirs = claim_one(other)["options"]["task_id"]
        assert server.services is not None
        key_id = databases.scalar(deployment.db_url, "SELECT claimed_by FROM tasks "
                                  "WHERE task_id = :t", t=mine)
        their_id = databases.scalar(deployment.db_url, "SELECT claimed_by FROM tasks "
                                    "WHERE task_id = :t", t=theirs)
        group = [tasks.FinishRequest(mine, key_id, {"time_used": 1.0}),
                 tasks.FinishRequest(mine, key_id, {"time_used": 2.0}),
                 tasks.FinishRequest(theirs, key_id, {}),
                 tasks.FinishRequest("no-such-task", key_id, {}),
                 tasks.FinishRequest(mine, key_id, {}, attempt=7)]
        answers = server.run(server.services.db.write(tasks.finish_batch, group))
        still = other.call("stillrunning", task_id=theirs)
    assert answers[0] == {"task_id": mine, "status": "complete", "repeated": False}
    assert answers[1] == {"task_id": mine, "status": "complete", "repeated": True}
    assert isinstance(answers[2], Conflict) and answers[2].data["status"] == "processing"
    assert isinstance(answers[3], NotFound)
    assert isinstance(answers[4], Conflict)  # an attempt that is not the task's
    assert key_id != their_id and still is True
    assert databases.scalar(deployment.db_url, "SELECT COUNT(*) FROM task_stats "
                            "WHERE task_id = :t", t=mine) == 1
    assert databases.scalar(deployment.db_url, "SELECT time_used FROM task_stats "
                            "WHERE task_id = :t", t=mine) == 1.0
    assert databases.scalar(deployment.db_url, "SELECT status FROM tasks "
                            "WHERE task_id = :t", t=theirs) == "processing"
