"""Task requirements as pilots meet them: lists of platforms, and IceProd 2 expressions.

- ``requirements.os`` may list several platforms; a pilot offering any of them gets the
  task, one offering none of them does not.
- A requirement written as an expression (``$steering(...)``, ``$eval(...)``) is evaluated
  at submission from the config's steering parameters; one that needs what only a job
  knows (``$(job)``) is refused with -32602 naming it, and nothing is stored. A number
  written as a string stays that number.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.datasets import claim_one, config, offer, task, wait_counts
from tests.support.harness import Base, Harness
from tests.support.jsonrpc import expect_error
from tests.support.servers import http_get


@pytest.fixture(scope="module")
def base(module_server: Any, module_db_url: str) -> Base:
    return Base.start(module_server, module_db_url, {})


def offer_os(os_name: str | None) -> dict[str, Any]:
    return {**offer(), "os": os_name}


def test_os_list_matches_any_entry(h: Harness) -> None:
    dataset_id = h.submit(config(task("t", requirements={"os": ["RHEL_7", "RHEL_8"]})))
    wait_counts(h.public, dataset_id, {"queued": 1})
    pilot = h.pilot()
    # "_" must not act as a wildcard, nor may a prefix or a neighbour's name match
    for other in ("RHEL_9", "RHEL", "RHEL_", "RHELX8", "%", "EL_8"):
        assert pilot.call("new_task", **offer_os(other)) == [], other
    got = pilot.call("new_task", **offer_os("RHEL_8"))
    assert len(got) == 1 and got[0]["options"]["dataset_id"] == dataset_id, got
    task_id = got[0]["options"]["task_id"]
    shown = h.task(task_id)["requirements"]["os"]
    assert shown == ["RHEL_7", "RHEL_8"], shown
    status, page = http_get(h.srv.port, f"/task/{task_id}")
    assert status == 200 and "os RHEL_7 or RHEL_8" in page.decode(), page[-2000:]


def test_first_entry_of_os_list_still_matches(h: Harness) -> None:
    dataset_id = h.submit(config(task("t", requirements={"os": ["RHEL_7", "RHEL_8"]})))
    wait_counts(h.public, dataset_id, {"queued": 1})
    got = h.pilot().call("new_task", **offer_os("RHEL_7"))
    assert len(got) == 1 and got[0]["options"]["dataset_id"] == dataset_id, got


def test_single_os_and_no_os(h: Harness) -> None:
    only7 = h.submit(config(task("t", requirements={"os": "RHEL_7"})))
    wait_counts(h.public, only7, {"queued": 1})
    assert h.pilot().call("new_task", **offer_os("RHEL_8")) == []
    assert h.pilot().call("new_task", **offer_os(None)) == []
    got = h.pilot().call("new_task", **offer_os("RHEL_7"))
    assert len(got) == 1 and got[0]["options"]["dataset_id"] == only7, got


def test_expressions_are_evaluated_from_steering(h: Harness) -> None:
    cfg = config(task("t", requirements={"cpu": "$steering(cpus)",
                                         "memory": "$eval($steering(mem)//2)",
                                         "disk": "2.5", "time": "$eval(1+1)"}))
    cfg["steering"]["parameters"] = {"cpus": 2, "mem": "$eval(3*3)"}
    dataset_id = h.submit(cfg)
    wait_counts(h.public, dataset_id, {"queued": 1})
    # a pilot offering less than the evaluated needs gets nothing
    assert h.pilot().call("new_task", **{**offer(cpu=1, memory=8.0), "os": None}) == []
    assert h.pilot().call("new_task", **{**offer(cpu=2, memory=3.9), "os": None}) == []
    got = claim_one(h.pilot(), cpu=2, memory=4.0, disk=2.5, time=2.0)
    assert got["options"]["dataset_id"] == dataset_id
    resources = got["options"]["resources"]
    assert (resources["cpu"], resources["memory"], resources["disk"], resources["time"]) == \
        (2, 4.0, 2.5, 2.0), resources


@pytest.mark.parametrize(("expression", "named"), [
    ("$eval($(job) % 4 + 1)", "$(job)"),
    ("$steering(no_such_parameter)", "no_such_parameter"),
])
def test_expression_that_needs_the_job_is_refused(h: Harness, expression: str,
                                                  named: str) -> None:
    before = h.public.call("public_get_datasets_by_status")
    cfg = config(task("first"), task("second", requirements={"memory": expression}))
    error = expect_error(-32602, h.owner.call, "submit_dataset", config=cfg,
                         description="expression", njobs=1)
    problems = error.data["problems"]
    assert len(problems) == 1, problems
    assert problems[0].startswith("$.tasks[1].requirements.memory"), problems
    assert expression in problems[0] and named in problems[0], problems
    assert h.public.call("public_get_datasets_by_status") == before
