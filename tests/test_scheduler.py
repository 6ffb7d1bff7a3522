"""The scheduler as users see it: lazy jobs, priority, derived status, dataset actions.

One server per database backend (queue depth 300, 100 jobs made per pass, max_resets 2);
each test's datasets are suspended when it ends (see tests/support/harness.py).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from iceprod_server.client import IceProdClient, RPCError
from tests.support import databases, jsonrpc
from tests.support.datasets import (
    claim_one,
    config,
    counts,
    offer,
    task,
    wait_counts,
    wait_until,
)
from tests.support.harness import Base, Harness

QUEUE_DEPTH = 300
BATCH = 100
MAX_RESETS = 2
ENV = {"ICEPROD_QUEUE_DEPTH": str(QUEUE_DEPTH), "ICEPROD_MATERIALIZE_BATCH": str(BATCH),
       "ICEPROD_MAX_RESETS": str(MAX_RESETS), "ICEPROD_SCHEDULER_INTERVAL": "0.3"}


@pytest.fixture(scope="module")
def base(module_server: Any, module_db_url: str) -> Base:
    return Base.start(module_server, module_db_url, ENV)


def jobs_rows(h: Harness, dataset_id: str) -> int:
    return int(databases.scalar(h.srv.db_url, "SELECT COUNT(*) FROM jobs "
                                "WHERE dataset_id = :d", d=dataset_id))


def finish(pilot: IceProdClient, desc: dict[str, Any]) -> None:
    opts = desc["options"]
    pilot.call("finish_task", task_id=opts["task_id"], attempt=opts["attempt"], stats={})


def fail_all(h: Harness, pilot: IceProdClient, dataset_id: str, expected: int) -> list[str]:
    """Claim and report errors on every task offered until the dataset has ``expected``
    failed tasks (each fails for good after MAX_RESETS errors)."""
    failed: set[str] = set()

    def step() -> bool:
        for desc in pilot.call("new_task", **offer()):
            pilot.call("task_error", task_id=desc["options"]["task_id"],
                       error_info={"error": "boom"})
        failed.update(t["task_id"] for t in h.public.call(
            "public_get_tasks", dataset_id=dataset_id, status="failed")["items"])
        return len(failed) >= expected

    wait_until(f"{expected} tasks to fail", step)
    assert len(failed) == expected
    return sorted(failed)


def test_a_million_jobs_are_made_lazily(h: Harness) -> None:
    dataset_id = h.submit(njobs=1_000_000)
    wait_until("tasks to be queued", lambda: counts(h.public, dataset_id).get("queued"))
    h.srv.wait_scheduler_passes(3)  # passes that had every chance to make more jobs
    made = jobs_rows(h, dataset_id)
    assert 0 < made <= QUEUE_DEPTH + 2 * BATCH, f"{made} job rows made for a queue of " \
                                                f"{QUEUE_DEPTH}"
    by_state = counts(h.public, dataset_id)
    assert sum(by_state.values()) == 1_000_000, by_state
    assert by_state["idle"] >= 1_000_000 - made
    info = h.public.call("public_get_dataset", dataset_id=dataset_id)
    assert info["njobs"] == 1_000_000


def test_higher_priority_is_claimed_first(h: Harness) -> None:
    low = h.submit(njobs=5, priority=0.0)
    high = h.submit(njobs=5, priority=10.0)
    wait_counts(h.public, low, {"queued": 5})
    wait_counts(h.public, high, {"queued": 5})
    pilot = h.pilot()
    order = []
    for _ in range(10):
        desc = claim_one(pilot)
        order.append(desc["options"]["dataset_id"])
        finish(pilot, desc)
    assert order == [high] * 5 + [low] * 5, order


def test_job_and_dataset_status_are_derived(h: Harness) -> None:
    done = h.submit(njobs=2)
    mixed = h.submit(njobs=2)
    pilot = h.pilot()
    for _ in range(2):
        finish(pilot, claim_one(pilot))
    wait_until("the dataset to be complete",
               lambda: done in h.public.call("public_get_datasets_by_status")
               .get("complete", []))
    jobs = h.public.call("public_get_jobs", dataset_id=done)["items"]
    assert [j["status"] for j in jobs] == ["complete", "complete"], jobs

    # one job completes, the other's task fails for good: errors
    finish(pilot, claim_one(pilot))
    fail_all(h, pilot, mixed, 1)
    wait_until("the dataset to have errors",
               lambda: h.dataset_status(mixed) == "errors", timeout=15)
    jobs = h.public.call("public_get_jobs", dataset_id=mixed)["items"]
    assert sorted(j["status"] for j in jobs) == ["complete", "errors"], jobs
    assert counts(h.public, mixed) == {"complete": 1, "failed": 1}


def test_suspend_resume_reset_hard_reset(h: Harness) -> None:
    dataset_id = h.submit(njobs=4)
    wait_counts(h.public, dataset_id, {"queued": 4})
    pilot = h.pilot()
    running = claim_one(pilot)["options"]

    result = h.owner.call("suspend_dataset", dataset_id=dataset_id)
    assert result["tasks"] == 4, result
    assert counts(h.public, dataset_id) == {"suspended": 4}
    wait_until("the dataset to be suspended",
               lambda: h.dataset_status(dataset_id) == "suspended", timeout=10)
    try:  # the running task lost its claim
        assert pilot.call("stillrunning", task_id=running["task_id"]) is False
    except RPCError as e:
        assert e.code == -32004, e
    h.srv.wait_scheduler_passes(3)  # passes that would have queued anything claimable
    assert pilot.call("new_task", **offer()) == []

    result = h.owner.call("resume_dataset", dataset_id=dataset_id)
    assert result["tasks"] == 4, result
    wait_counts(h.public, dataset_id, {"queued": 4})
    for _ in range(2):
        finish(pilot, claim_one(pilot))
    failed = fail_all(h, pilot, dataset_id, 2)
    assert counts(h.public, dataset_id) == {"complete": 2, "failed": 2}
    assert all(h.task(t)["failures"] == MAX_RESETS for t in failed)

    result = h.owner.call("reset_dataset", dataset_id=dataset_id)
    assert result["tasks"] == 2, result
    wait_counts(h.public, dataset_id, {"complete": 2, "queued": 2})
    assert all(h.task(t)["failures"] == 0 for t in failed)

    result = h.owner.call("hard_reset_dataset", dataset_id=dataset_id)
    assert result["tasks"] == 4, result
    wait_counts(h.public, dataset_id, {"queued": 4})
    assert h.dataset_status(dataset_id) == "processing"


def test_truncate_makes_no_new_jobs_but_existing_ones_run(h: Harness) -> None:
    dataset_id = h.submit(njobs=100_000)
    wait_until("tasks to be queued", lambda: counts(h.public, dataset_id).get("queued"))
    pilot = h.pilot()
    running = claim_one(pilot)
    h.owner.call("truncate_dataset", dataset_id=dataset_id)
    made = jobs_rows(h, dataset_id)
    assert h.dataset_status(dataset_id) == "truncated"
    finish(pilot, running)  # a running task finishes
    finish(pilot, claim_one(pilot))  # and queued tasks of existing jobs still run
    h.srv.wait_scheduler_passes(3)  # passes that would have made more jobs
    assert jobs_rows(h, dataset_id) == made, "a truncated dataset got new jobs"
    by_state = counts(h.public, dataset_id)
    assert sum(by_state.values()) == made, \
        f"a truncated dataset counts {sum(by_state.values())} tasks for {made} jobs"
    assert by_state["complete"] == 2


def test_bulk_task_actions_count_what_they_change(h: Harness) -> None:
    dataset_id = h.submit(config(task("a"), task("b")), njobs=3)
    wait_counts(h.public, dataset_id, {"queued": 6})
    tasks = h.public.call("public_get_tasks", dataset_id=dataset_id)["items"]
    a_ids = [t["task_id"] for t in tasks if t["name"] == "a"]
    assert h.owner.call("suspend_tasks", task_ids=a_ids[:2]) == {"count": 2}
    assert counts(h.public, dataset_id) == {"queued": 4, "suspended": 2}
    assert h.owner.call("suspend_tasks", dataset_id=dataset_id, task_name="b") == {"count": 3}
    assert counts(h.public, dataset_id) == {"queued": 1, "suspended": 5}
    assert h.owner.call("resume_tasks", dataset_id=dataset_id,
                        status="suspended") == {"count": 5}
    wait_counts(h.public, dataset_id, {"queued": 6})
    job_ids = sorted({t["job_id"] for t in tasks})
    assert h.owner.call("suspend_jobs", job_ids=job_ids[:1]) == {"count": 2}
    assert counts(h.public, dataset_id) == {"queued": 4, "suspended": 2}
    assert h.owner.call("reset_jobs", job_ids=job_ids[:1]) == {"count": 2}
    wait_counts(h.public, dataset_id, {"queued": 6})


def test_tasks_suspended_one_by_one_run_again_when_resumed(h: Harness) -> None:
    # every task suspended by its id: the dataset is derived suspended, and a resume of
    # its tasks (a human's act, as resume_dataset is) makes it processing again
    dataset_id = h.submit(njobs=2)
    wait_counts(h.public, dataset_id, {"queued": 2})
    ids = [t["task_id"] for t in h.public.call("public_get_tasks",
                                                dataset_id=dataset_id)["items"]]
    assert h.owner.call("suspend_tasks", task_ids=ids) == {"count": 2}
    wait_until("the dataset to be derived suspended",
               lambda: h.dataset_status(dataset_id) == "suspended", timeout=15)
    assert h.owner.call("resume_tasks", task_ids=ids) == {"count": 2}
    wait_counts(h.public, dataset_id, {"queued": 2})
    assert h.dataset_status(dataset_id) == "processing"
    pilot = h.pilot()
    finish(pilot, claim_one(pilot))


def test_maintained_counts_match_the_tasks_after_mixed_work(h: Harness) -> None:
    """The counts users see come from trigger-kept counters: after claims, completions,
    errors and bulk actions they equal a fresh GROUP BY over the task rows."""
    dataset_id = h.submit(config(task("a"), task("b", depends=["a"])), njobs=20)
    wait_until("tasks to be queued", lambda: counts(h.public, dataset_id).get("queued"))
    pilot = h.pilot()
    for i in range(8):
        opts = claim_one(pilot)["options"]
        if i % 3 == 0:
            pilot.call("task_error", task_id=opts["task_id"], attempt=opts["attempt"],
                       error_info={"error": "boom"})
        else:
            pilot.call("finish_task", task_id=opts["task_id"], attempt=opts["attempt"],
                       stats={})
    h.owner.call("suspend_tasks", dataset_id=dataset_id, task_name="b")
    h.owner.call("resume_tasks", dataset_id=dataset_id, status="suspended")
    h.srv.wait_scheduler_passes(2)  # the scheduler has moved what it moves
    truth = dict(databases.query(h.srv.db_url, "SELECT status, COUNT(*) FROM tasks "
                                 "WHERE dataset_id = :d GROUP BY status", d=dataset_id))
    kept = dict(databases.query(h.srv.db_url, "SELECT status, SUM(n) FROM task_counts "
                                "WHERE dataset_id = :d AND n <> 0 GROUP BY status",
                                d=dataset_id))
    assert {k: int(v) for k, v in kept.items() if int(v)} == {k: int(v) for k, v in
                                                              truth.items()}
    shown = counts(h.public, dataset_id)
    assert sum(shown.values()) == 40
    assert shown.get("complete", 0) == truth.get("complete", 0)


def test_claims_arriving_together_go_best_first_to_the_earliest_caller(h: Harness) -> None:
    """new_task calls that arrive at once (here one JSON-RPC batch, whose calls the server
    runs together) each get their own tasks, the best to the earliest call."""
    low = h.submit(njobs=6, priority=0.0)
    high = h.submit(njobs=3, priority=10.0)
    wait_counts(h.public, low, {"queued": 6})
    wait_counts(h.public, high, {"queued": 3})
    batch = [{"jsonrpc": "2.0", "method": "new_task", "params": offer(), "id": i}
             for i in range(9)]
    answer = jsonrpc.post(h.srv.rpc_url, json.dumps(batch), headers={
        "Authorization": f"Bearer {h.base.pilot_key}", "X-IceProd-Pilot": "batch-pilot"})
    assert answer.status == 200
    results = {r["id"]: r["result"] for r in answer.json()}
    assert [len(results[i]) for i in range(9)] == [1] * 9
    order = [results[i][0]["options"]["dataset_id"] for i in range(9)]
    assert order == [high] * 3 + [low] * 6, order
    task_ids = {results[i][0]["options"]["task_id"] for i in range(9)}
    assert len(task_ids) == 9
    assert counts(h.public, high) == {"processing": 3}
    assert counts(h.public, low) == {"processing": 6}
