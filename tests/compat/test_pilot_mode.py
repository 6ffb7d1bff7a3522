"""IceProd 2.3 pilots in pilot mode, request by request: a whole session, a failing task,
two pilots sharing a key, and a retry that goes to another pilot. Each test checks what
the IceProd 2 pilot sees in the answers, then what the task and dataset pages show.

One server per database backend serves the module; each test suspends its datasets when
it ends (tests.support.harness), so no test claims another's tasks.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.compat.iceprod2 import RESOURCE_KEYS, Iceprod2Error, Iceprod2Pilot
from tests.support.datasets import config, task, wait_counts, wait_until
from tests.support.harness import Base, Harness
from tests.support.servers import http_get

OPTIONS = {"task_id", "task", "dataset_id", "dataset", "job", "jobs_submitted", "debug",
           "resources", "attempt"}


@pytest.fixture(scope="module")
def base(module_server: Any, module_db_url: str) -> Base:
    return Base.start(module_server, module_db_url, {})


def _pilot(h: Harness, source: str = "127.0.0.1") -> Iceprod2Pilot:
    return Iceprod2Pilot(h.srv.port, h.base.pilot_key, source=source,
                         hostname=f"node-{source}.test.grid")


def _claim(pilot: Iceprod2Pilot) -> dict[str, Any]:
    got = wait_until("new_task to hand out a task", pilot.new_task)
    assert len(got) == 1, got
    return got[0]


def _page(h: Harness, path: str) -> str:
    status, body = http_get(h.srv.port, path)
    assert status == 200, (path, status)
    return body.decode()


def _number(h: Harness, dataset_id: str) -> int:
    number: int = h.public.call("public_get_dataset", dataset_id=dataset_id)["dataset_num"]
    return number


def _check_shape(desc: dict[str, Any], dataset_id: str, number: int, name: str) -> None:
    """What IceProd 2 reads from one new_task item: the dataset config itself."""
    options = desc["options"]
    # the task's options, plus what the config's own options held
    assert set(options) == OPTIONS | {"custom"}, sorted(options)
    assert options["task"] == name and options["dataset_id"] == dataset_id
    # its parser reads the top-level dataset for $(dataset), before options
    assert desc["dataset"] == number and options["dataset"] == number
    # it looks the task up by name in the config's own task list
    assert [t["name"] for t in desc["tasks"] if t["name"] == name] == [name]
    assert "steering" in desc and desc["version"] == 3
    assert options["custom"] == "kept", "the config's own options must stay"
    resources = options["resources"]
    assert set(resources) == RESOURCE_KEYS, resources
    assert all(isinstance(v, int | float) and not isinstance(v, bool)
               for v in resources.values()), resources


def _config(*tasks: dict[str, Any]) -> dict[str, Any]:
    cfg = config(*tasks)
    cfg["options"] = {"custom": "kept"}
    return cfg


def test_a_pilot_mode_session(h: Harness) -> None:
    dataset_id = h.submit(_config(task("generate", requirements={"memory": 1.5}),
                                  task("filter", depends=["generate"])))
    number = _number(h, dataset_id)
    pilot = _pilot(h)
    pilot_id = str(uuid.uuid4())
    assert pilot.call("echo", value="e") == "e"

    for name in ("generate", "filter"):
        desc = _claim(pilot)
        _check_shape(desc, dataset_id, number, name)
        options = desc["options"]
        assert (options["job"], options["jobs_submitted"], options["debug"],
                options["attempt"]) == (0, 1, False, 1)
        if name == "generate":
            assert options["resources"]["memory"] == 1.5
        task_id = options["task_id"]
        assert pilot.update_pilot(pilot_id, [task_id]) is True
        assert pilot.stillrunning(task_id) is True
        pilot.finish_task(task_id)
        pilot.upload_logs(task_id, name)  # in the runner's finally, after reporting
        assert pilot.update_pilot(pilot_id, []) is True

        info = h.task(task_id)
        assert info["status"] == "complete" and info["failures"] == 0
        assert {log["name"]: log["attempt"] for log in info["logs"]} == {
            "stdout": 1, "stderr": 1, "stdlog": 1}
        page = _page(h, f"/task/{task_id}")
        assert 'data-status="complete"' in page
        assert f"{name} stdlog end" in page and f"{name} stderr line 1" in page

    wait_until("the dataset to be complete",
               lambda: h.dataset_status(dataset_id) == "complete")
    assert 'id="dataset-status">complete<' in _page(h, f"/dataset/{dataset_id}")


def test_a_failing_task_keeps_its_logs(h: Harness) -> None:
    dataset_id = h.submit(_config(task("only")))
    pilot = _pilot(h)
    first = _claim(pilot)["options"]
    task_id = first["task_id"]
    result = pilot.task_error(task_id, "module icecube.sim exited with code 3")
    assert result["status"] == "reset", result
    pilot.upload_logs(task_id, "failed try")  # after task_error, as IceProd 2 does

    info = h.task(task_id)
    assert info["failures"] == 1
    assert [(a["attempt"], a["error"]) for a in info["attempts"]] == [(1, True)]
    assert {log["name"]: log["attempt"] for log in info["logs"]} == {
        "stdout": 1, "stderr": 1, "stdlog": 1}
    page = _page(h, f"/task/{task_id}")
    assert "module icecube.sim exited with code 3" in page
    assert "failed try stderr end" in page

    # the retry runs as attempt 2 and its logs replace the first ones on the page
    again = _claim(pilot)["options"]
    assert (again["task_id"], again["attempt"]) == (task_id, 2)
    pilot.finish_task(task_id)
    pilot.upload_logs(task_id, "second try")
    info = h.task(task_id)
    assert info["status"] == "complete" and info["failures"] == 1
    assert {log["attempt"] for log in info["logs"]} == {2}
    assert [(a["attempt"], a["error"]) for a in info["attempts"]] == [(1, True), (2, False)]
    assert "second try stdout end" in _page(h, f"/task/{task_id}")
    wait_counts(h.public, dataset_id, {"complete": 1})


def test_logs_from_anyone_else_are_refused(h: Harness) -> None:
    h.submit(_config(task("only")))
    pilot, other = _pilot(h), _pilot(h, "127.0.0.2")
    task_id = _claim(pilot)["options"]["task_id"]
    pilot.finish_task(task_id)
    with pytest.raises(Iceprod2Error) as refused:
        other.upload_logfile(task_id, "stdout", "not mine")
    assert refused.value.code == -32004
    assert h.task(task_id)["logs"] == []


def test_two_pilots_on_one_key_are_told_apart_by_address(h: Harness) -> None:
    dataset_id = h.submit(_config(task("only")), njobs=2)
    a, b = _pilot(h, "127.0.0.1"), _pilot(h, "127.0.0.2")
    task_a = _claim(a)["options"]["task_id"]
    task_b = _claim(b)["options"]["task_id"]
    assert task_a != task_b

    for call in (lambda: b.stillrunning(task_a), lambda: b.finish_task(task_a),
                 lambda: b.task_error(task_a, "not mine"),
                 lambda: b.upload_logfile(task_a, "stdout", "not mine")):
        with pytest.raises(Iceprod2Error) as refused:
            call()
        assert refused.value.code == -32004
    info = h.task(task_a)
    assert (info["status"], info["failures"], info["logs"]) == ("processing", 0, [])

    assert a.stillrunning(task_a) is True and b.stillrunning(task_b) is True
    a.finish_task(task_a)
    b.finish_task(task_b)
    wait_counts(h.public, dataset_id, {"complete": 2})
    hosts = {h.task(t)["attempts"][0]["hostname"] for t in (task_a, task_b)}
    assert hosts == {"node-127.0.0.1.test.grid", "node-127.0.0.2.test.grid"}


def test_a_retry_goes_to_another_pilot(h: Harness) -> None:
    dataset_id = h.submit(_config(task("only")), njobs=2)
    wait_counts(h.public, dataset_id, {"queued": 2})
    a, b = _pilot(h, "127.0.0.1"), _pilot(h, "127.0.0.2")
    failing = _claim(a)["options"]["task_id"]
    a.task_error(failing, "segfault")
    wait_until("the failed task to be queued again",
               lambda: h.task(failing)["status"] == "queued")
    # the failed task is first in the queue, but its last pilot gets the other one
    other = _claim(a)["options"]
    assert other["task_id"] != failing and other["attempt"] == 1
    retry = _claim(b)["options"]
    assert (retry["task_id"], retry["attempt"]) == (failing, 2)
    a.finish_task(other["task_id"])
    b.finish_task(failing)
    wait_counts(h.public, dataset_id, {"complete": 2})
    hosts = [at["hostname"] for at in h.task(failing)["attempts"]]
    assert hosts == ["node-127.0.0.1.test.grid", "node-127.0.0.2.test.grid"]
