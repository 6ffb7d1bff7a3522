"""The read methods behind the dataset pages, checked for what they answer after known
work: task stats, completion, one job, throughput.

A dataset of two tasks per job (``b`` after ``a``), three jobs: the three ``a`` tasks
finish in 10, 20 and 30 s (as their pilots report), one ``b`` task fails once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.datasets import claim_one, config, task, wait_counts
from tests.support.harness import Base, Harness


@dataclass
class Worked:
    h: Harness
    dataset_id: str


@pytest.fixture(scope="module")
def base(module_server: Any, module_db_url: str) -> Base:
    return Base.start(module_server, module_db_url, {})


@pytest.fixture(scope="module")
def worked(base: Base) -> Iterator[Worked]:
    h = Harness(base)
    dataset_id = h.submit(config(task("a"), task("b", depends=["a"])), njobs=3)
    wait_counts(h.public, dataset_id, {"queued": 3, "idle": 3})
    pilot = h.pilot()
    for used in (10.0, 20.0, 30.0):
        opts = claim_one(pilot)["options"]
        assert opts["task"] == "a", opts
        pilot.call("finish_task", task_id=opts["task_id"], attempt=opts["attempt"],
                   stats={"hostname": "node", "time_used": used})
    opts = claim_one(pilot)["options"]
    assert opts["task"] == "b", opts
    pilot.call("task_error", task_id=opts["task_id"], attempt=opts["attempt"],
               error_info={"hostname": "node", "time_used": 5.0, "error": "boom"})
    yield Worked(h, dataset_id)
    h.close()


def test_task_stats(worked: Worked) -> None:
    stats = worked.h.public.call("public_get_task_stats", dataset_id=worked.dataset_id)
    assert set(stats) == {"a", "b"}, stats
    a, b = stats["a"], stats["b"]
    assert a["count"] == 3 and a["sample"] == 3 and a["failed"] == 0, a
    assert (a["min"], a["max"]) == (10.0, 30.0), a
    assert a["mean"] == pytest.approx(20.0) and a["p50"] == pytest.approx(20.0), a
    assert 20.0 <= a["p90"] <= 30.0, a
    assert b["count"] == 0 and b["failed"] == 1 and b["sample"] == 0, b
    assert b["mean"] is None and b["p50"] is None, b


def test_dataset_completion(worked: Worked) -> None:
    done = worked.h.public.call("public_get_dataset_completion", dataset_id=worked.dataset_id)
    assert done["total"] == 6 and done["complete"] == 3, done
    assert done["fraction"] == pytest.approx(0.5), done
    assert done["by_status"]["complete"] == 3, done
    assert sum(done["by_status"].values()) == 6, done


def test_one_job_with_its_tasks(worked: Worked) -> None:
    tasks = worked.h.public.call("public_get_tasks", dataset_id=worked.dataset_id)["items"]
    finished = next(t for t in tasks if t["name"] == "a" and t["status"] == "complete")
    job = worked.h.public.call("public_get_job", job_id=finished["job_id"])
    assert job["job_id"] == finished["job_id"] and job["dataset_id"] == worked.dataset_id
    assert job["job_index"] == finished["job_index"], job
    by_name = {t["name"]: t for t in job["tasks"]}
    assert set(by_name) == {"a", "b"}, job["tasks"]
    assert by_name["a"]["task_id"] == finished["task_id"]
    assert by_name["a"]["status"] == "complete"
    assert all(t["job_id"] == finished["job_id"] for t in job["tasks"])


def test_throughput(worked: Worked) -> None:
    answer = worked.h.public.call("public_get_throughput", dataset_id=worked.dataset_id,
                                  hours=2)
    assert answer["hours"] == 2 and answer["dataset_id"] == worked.dataset_id, answer
    buckets = answer["buckets"]
    assert len(buckets) == 2, buckets
    assert buckets[0]["start"] < buckets[1]["start"], buckets
    # the work was done within the last two clock hours, whatever hour the test ran in
    assert sum(b["complete"] for b in buckets) == 3, buckets
    assert sum(b["failed"] for b in buckets) == 1, buckets
    everything = worked.h.public.call("public_get_throughput", hours=2)
    assert everything["dataset_id"] is None
    assert sum(b["complete"] for b in everything["buckets"]) >= 3, everything
