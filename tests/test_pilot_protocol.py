"""The pilot protocol, call by call, as an IceProd pilot sees it.

One server per database backend serves the whole module (max_resets 3, logs over 2,000
bytes go to files). Each test submits its own datasets and suspends them at the end, so no
test can claim another's tasks.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import databases
from tests.support.datasets import (
    claim_one,
    config,
    counts,
    offer,
    submit,
    task,
    wait_counts,
    wait_until,
)
from tests.support.harness import Base, Harness
from tests.support.jsonrpc import expect_error
from tests.support.servers import rss_kib

MAX_RESETS = 3
LOG_INLINE_MAX = 2000
ENV = {"ICEPROD_MAX_RESETS": str(MAX_RESETS), "ICEPROD_LOG_INLINE_MAX": str(LOG_INLINE_MAX)}


@pytest.fixture(scope="module")
def base(module_server: Any, module_db_url: str) -> Base:
    return Base.start(module_server, module_db_url, ENV)


def test_stillrunning_only_for_the_claim(h: Harness) -> None:
    h.submit()
    a, b = h.pilot(), h.pilot()
    opts = claim_one(a)["options"]
    task_id = opts["task_id"]
    assert a.call("stillrunning", task_id=task_id) is True
    assert a.call("stillrunning", task_id=task_id, attempt=opts["attempt"]) is True
    expect_error(-32004, b.call, "stillrunning", task_id=task_id)
    expect_error(-32004, a.call, "stillrunning", task_id=task_id, attempt=opts["attempt"] + 1)
    expect_error(-32003, a.call, "stillrunning", task_id="ffffffffffffffffffff")
    assert h.task(task_id)["status"] == "processing"


def test_set_processing_claims_a_queued_task(h: Harness) -> None:
    dataset_id = h.submit()
    wait_counts(h.public, dataset_id, {"queued": 1})
    queued = h.public.call("public_get_tasks", dataset_id=dataset_id,
                                 status="queued")["items"]
    task_id = queued[0]["task_id"]
    a, b = h.pilot(), h.pilot()
    assert a.call("set_processing", task_id=task_id) is True
    assert a.call("set_processing", task_id=task_id) is True  # a repeat changes nothing
    expect_error(-32004, b.call, "set_processing", task_id=task_id)
    assert b.call("new_task", **offer()) == []
    assert counts(h.public, dataset_id) == {"processing": 1}
    a.call("finish_task", task_id=task_id, stats={})
    wait_counts(h.public, dataset_id, {"complete": 1})


def test_finish_task_twice_is_a_no_op_success(h: Harness) -> None:
    dataset_id = h.submit()
    a = h.pilot()
    opts = claim_one(a)["options"]
    stats = {"hostname": "node1", "time_used": 12.5}
    a.call("finish_task", task_id=opts["task_id"], stats=stats, attempt=opts["attempt"])
    a.call("finish_task", task_id=opts["task_id"], stats=stats, attempt=opts["attempt"])
    a.call("finish_task", task_id=opts["task_id"], stats=stats)
    info = h.task(opts["task_id"])
    assert info["status"] == "complete"
    assert len(info["attempts"]) == 1, "a repeated finish_task stored another task_stat"
    assert info["attempts"][0]["hostname"] == "node1"
    assert info["attempts"][0]["time_used"] == 12.5
    expect_error(-32004, h.pilot().call, "finish_task", task_id=opts["task_id"], stats={})
    assert counts(h.public, dataset_id) == {"complete": 1}


def test_task_error_resets_then_fails_after_max_resets(h: Harness) -> None:
    dataset_id = h.submit()
    a = h.pilot()
    task_id = None
    for failure in range(1, MAX_RESETS + 1):
        opts = claim_one(a)["options"]
        task_id = task_id or opts["task_id"]
        assert opts["task_id"] == task_id and opts["attempt"] == failure
        result = a.call("task_error", task_id=task_id, attempt=opts["attempt"],
                        error_info={"error": f"failure {failure}", "hostname": "node1"})
        expected = "failed" if failure == MAX_RESETS else "reset"
        assert result["status"] == expected, result
        # the same report again changes nothing
        a.call("task_error", task_id=task_id, attempt=opts["attempt"], error_info={})
        # and finishing the failed attempt is refused
        expect_error(-32004, a.call, "finish_task", task_id=task_id, stats={})
    assert task_id is not None
    info = h.task(task_id)
    assert (info["status"], info["failures"]) == ("failed", MAX_RESETS)
    assert [at["error"] for at in info["attempts"]] == [True] * MAX_RESETS
    assert info["attempts"][-1]["stats"]["error"] == f"failure {MAX_RESETS}"
    wait_counts(h.public, dataset_id, {"failed": 1})
    assert a.call("new_task", **offer()) == []


def test_task_error_on_a_debug_dataset_suspends(h: Harness) -> None:
    dataset_id = h.submit(debug=True)
    a = h.pilot()
    opts = claim_one(a)["options"]
    assert opts["debug"] is True
    result = a.call("task_error", task_id=opts["task_id"], error_info={"error": "boom"})
    assert result["status"] == "suspended"
    wait_counts(h.public, dataset_id, {"suspended": 1})
    assert h.task(opts["task_id"])["failures"] == 1


@pytest.mark.parametrize("error_info, grown", [
    ({"error": "Resource overuse for memory: 3.2GB"}, "memory"),
    ({"error": "killed", "resources": {"memory": 1.7, "time": 0.1}}, "memory"),
    ({"error": "Resource overuse for time", "resources": {"time": 2.0}}, "time"),
])
def test_overuse_grows_the_requirement(h: Harness, error_info: dict[str, Any],
                                       grown: str) -> None:
    h.submit(config(task("t", requirements={"memory": 1.0, "time": 1.0, "disk": 1.0})))
    a = h.pilot()
    first = claim_one(a)["options"]
    assert first["resources"][grown] == 1.0
    a.call("task_error", task_id=first["task_id"], error_info=error_info)
    requirements = h.task(first["task_id"])["requirements"]
    assert requirements[grown] == pytest.approx(1.5), requirements
    others = {"memory", "time", "disk"} - {grown}
    assert all(requirements[k] == 1.0 for k in others), requirements
    # once queued again, an offer below the grown requirement does not get it
    wait_until("the task to be queued again",
               lambda: h.task(first["task_id"])["status"] == "queued")
    small: dict[str, Any] = {grown: 1.2}
    assert a.call("new_task", **offer(**small)) == []
    again = claim_one(a)["options"]
    assert again["task_id"] == first["task_id"]
    assert again["resources"][grown] == pytest.approx(1.5)
    a.call("finish_task", task_id=again["task_id"], stats={})


def test_upload_logfile_plain_packed_and_large(h: Harness) -> None:
    h.submit()
    a = h.pilot()
    task_id = claim_one(a)["options"]["task_id"]
    a.call("upload_logfile", task=task_id, name="stdout", data="line one\nline two\n")
    packed = base64.b64encode(zlib.compress(b"an IceProd 2 pilot's stderr\n")).decode()
    a.call("upload_logfile", task=task_id, name="stderr", data=packed)
    big = "".join(f"stdlog line {i:05d} {'x' * 40}\n" for i in range(2000))
    assert len(big) > 40 * LOG_INLINE_MAX
    a.call("upload_logfile", task=task_id, name="stdlog", data=big)
    expect_error(-32004, h.pilot().call, "upload_logfile", task=task_id, name="stdout",
                 data="not mine")
    # null is no log (found by tests/fuzz: it was -32603)
    expect_error(-32602, a.call, "upload_logfile", task=task_id, name="stdout", data=None)
    logs = {log["name"]: log for log in h.task(task_id)["logs"]}
    assert logs["stdout"]["tail"].splitlines() == ["line one", "line two"]
    assert logs["stderr"]["tail"].strip() == "an IceProd 2 pilot's stderr"
    assert logs["stdlog"]["tail"].splitlines()[-1] == f"stdlog line 01999 {'x' * 40}"
    assert "line 00000" not in logs["stdlog"]["tail"], "the tail should be the end only"
    assert logs["stdlog"]["size"] == len(big)

    rows = databases.query(h.srv.db_url, "SELECT name, data, path FROM task_logs "
                           "WHERE task_id = :t", t=task_id)
    stored = {name: (data, path) for name, data, path in rows}
    assert stored["stdout"][0] == "line one\nline two\n" and stored["stdout"][1] is None
    data, path = stored["stdlog"]
    assert data is None and path, "a large log must go to a file, not a database row"
    assert (Path(h.srv.data_dir) / path).read_text() == big
    a.call("finish_task", task_id=task_id, stats={})


def test_update_pilot_records_the_pilot(h: Harness) -> None:
    a = h.pilot()
    resources = {"cpu": 4, "gpu": 0, "memory": 8.0}
    assert a.call("update_pilot", pilot_id="pilot-xyz", tasks=[],
                  resources_available=resources, resources_claimed={}) is True
    assert a.call("update_pilot", pilot_id="pilot-xyz", tasks=["t1"],
                  resources_available={"cpu": 3}, resources_claimed={"cpu": 1}) is True
    rows = databases.query(h.srv.db_url, "SELECT pilot_id, tasks FROM pilots "
                           "WHERE pilot_id = 'pilot-xyz'")
    assert len(rows) == 1 and "t1" in str(rows[0][1]), rows
    expect_error(-32602, a.call, "update_pilot", pilot_id="")
    # IceProd 2 pilots send the task ids comma-separated, "" when idle
    for sent, stored in (("t1,t2", ["t1", "t2"]), ("", [])):
        assert a.call("update_pilot", pilot_id="pilot-v2", tasks=sent,
                      resources_available={"cpu": 1}, resources_claimed={}) is True
        rows = databases.query(h.srv.db_url, "SELECT tasks FROM pilots "
                               "WHERE pilot_id = 'pilot-v2'")
        assert [json.loads(r[0]) if isinstance(r[0], str) else r[0] for r in rows] == [
            stored], rows


def _pilot_row(h: Harness, pilot_id: str) -> tuple[Any, ...]:
    rows = databases.query(h.srv.db_url, "SELECT key_id, hostname, tasks, "
                           "resources_available FROM pilots WHERE pilot_id = :p", p=pilot_id)
    assert len(rows) == 1, rows
    key_id, hostname, tasks, available = rows[0]
    return (key_id, hostname, json.loads(tasks) if isinstance(tasks, str) else tasks,
            json.loads(available) if isinstance(available, str) else available)


def test_only_its_key_or_an_admin_changes_a_pilot_row(h: Harness) -> None:
    """A pilot's row belongs to the passkey that created it: a pilot with another key gets
    -32002 and the row stays as it was (its task's lease is not renewed either); another
    pilot on the same key, and an admin, may change it."""
    h.submit()
    owner = h.pilot()
    task_id = claim_one(owner)["options"]["task_id"]
    assert owner.call("update_pilot", pilot_id="owned-row", tasks=[task_id],
                      resources_available={"cpu": 2}, hostname="node-a") is True
    recorded = _pilot_row(h, "owned-row")
    assert recorded[2] == [task_id] and recorded[3] == {"cpu": 2}, recorded
    lease = h.task(task_id)["lease_expires"]

    other_key = h.srv.deployment.passkey("pilot")
    stranger = h.srv.client(other_key, pilot_ref="stranger", retries=0)
    refused = expect_error(-32002, stranger.call, "update_pilot", pilot_id="owned-row",
                           tasks=[task_id], resources_available={"cpu": 64})
    assert "owned-row" in refused.message + str(refused.data)
    expect_error(-32002, stranger.call, "update_pilot", pilot_id="owned-row", tasks="")
    assert _pilot_row(h, "owned-row") == recorded
    assert h.task(task_id)["lease_expires"] == lease
    # its own rows it may make and change
    assert stranger.call("update_pilot", pilot_id="stranger-row", tasks=[]) is True
    assert stranger.call("update_pilot", pilot_id="stranger-row", tasks=["x"]) is True
    assert _pilot_row(h, "stranger-row")[2] == ["x"]

    # the same key (pilots that share one are not told apart), and an admin, may
    assert h.pilot().call("update_pilot", pilot_id="owned-row", tasks=[],
                          resources_available={"cpu": 1}) is True
    assert _pilot_row(h, "owned-row")[2:] == ([], {"cpu": 1})
    assert h.base.admin.call("update_pilot", pilot_id="owned-row", tasks=["y"]) is True
    assert _pilot_row(h, "owned-row")[2] == ["y"]
    # the row still belongs to the key that made it
    assert _pilot_row(h, "owned-row")[0] == recorded[0]
    owner.call("finish_task", task_id=task_id, stats={})


def test_cpu_packing(h: Harness) -> None:
    dataset_id = h.submit(njobs=6)
    wait_counts(h.public, dataset_id, {"queued": 6})
    a = h.pilot()
    first = a.call("new_task", **offer(cpu=4))
    assert len(first) == 4, "a pilot offering 4 cpus should get 4 one-cpu tasks"
    assert len({t["options"]["task_id"] for t in first}) == 4
    second = a.call("new_task", **offer(cpu=4))
    assert len(second) == 2
    assert a.call("new_task", **offer(cpu=4)) == []
    for desc in first + second:
        a.call("finish_task", task_id=desc["options"]["task_id"], stats={})
    wait_counts(h.public, dataset_id, {"complete": 6})


def test_memory_and_gpu_packing(h: Harness) -> None:
    mem = h.submit(config(task("big", requirements={"memory": 2.0})), njobs=4)
    gpu = h.submit(config(task("hits", requirements={"gpu": 1, "memory": 1.0})), njobs=3)
    wait_counts(h.public, mem, {"queued": 4})
    wait_counts(h.public, gpu, {"queued": 3})
    a = h.pilot()
    # 4 cpus but 5 GB: two 2 GB tasks fit, and no GPU task without a GPU
    got = a.call("new_task", **offer(cpu=4, gpu=0, memory=5.0))
    assert [t["options"]["task"] for t in got] == ["big", "big"], got
    # one GPU: at most one GPU task, whatever the cpus; memory tasks fill the rest
    got2 = a.call("new_task", **offer(cpu=4, gpu=1, memory=16.0))
    names = sorted(t["options"]["task"] for t in got2)
    assert names.count("hits") == 1, names
    assert names.count("big") == 2, names
    assert sum(t["options"]["resources"]["gpu"] for t in got2) == 1
    for desc in got + got2:
        a.call("finish_task", task_id=desc["options"]["task_id"], stats={})
    assert counts(h.public, gpu).get("queued") == 2


MiB = 1024 * 1024
LOG_MAX = 64 * MiB


@functools.cache
def _bomb() -> str:
    """1,400 MiB of zeros, zlib-compressed (about 1.4 MB) and base64-encoded, as IceProd 2
    pilots send logs; made once (it takes seconds), a MiB at a time."""
    packer = zlib.compressobj(9)
    zeros = bytes(MiB)
    packed = b"".join([packer.compress(zeros) for _ in range(1400)] + [packer.flush()])
    return base64.b64encode(packed).decode()


def _peak_growth_kib(pid: int, action: Callable[[], Any]) -> tuple[Any, int]:
    """``action()``'s result, and how far the server's resident memory rose above where
    it was before, at its highest (the kernel's peak, reset first)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current size
    before = rss_kib(pid)
    result = action()
    status = Path(f"/proc/{pid}/status").read_text()
    peak = int(re.search(r"^VmHWM:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
    return result, peak - before


def test_a_compressed_log_bomb_is_refused_cheaply(server: Any, db_url: str) -> None:
    """About 1.4 MB of compressed zeros, which inflate to 1.4 GB: refused with -32602
    naming log_max_bytes, the server's memory rises by less than that limit, echo keeps
    answering within 100 ms meanwhile, and nothing is stored. From a caller that does not
    hold the task it is -32004, before any inflating. A large log within the limit is
    still kept whole."""
    srv = server(db_url, env={"ICEPROD_LOG_MAX_BYTES": str(LOG_MAX)})
    dep = srv.deployment
    submit(srv.client(dep.passkey("user", "alice")), config(task("a")), njobs=1)
    pilot = srv.client(dep.passkey("pilot"), pilot_ref="holder", retries=0)
    stranger = srv.client(dep.passkey("pilot"), pilot_ref="stranger", retries=0)
    task_id = claim_one(pilot)["options"]["task_id"]
    pid = srv.proc.pid
    bomb = _bomb()
    assert len(bomb) < 2 * MiB

    # a legitimate large log first: 5 MB of text, packed, kept in a file
    text = "".join(f"line {i:07d} of a long log\n" for i in range(200_000))
    pilot.call("upload_logfile", task=task_id, name="stdlog",
               data=base64.b64encode(zlib.compress(text.encode())).decode())
    logs = {log["name"]: log for log in srv.client().call("public_get_task",
                                                          task_id=task_id)["logs"]}
    assert logs["stdlog"]["size"] == len(text)
    assert logs["stdlog"]["tail"].splitlines()[-1] == "line 0199999 of a long log"
    files_before = sorted(p.relative_to(srv.data_dir)
                          for p in (Path(srv.data_dir) / "logs").rglob("*"))

    refused, grew_kib = _peak_growth_kib(pid, lambda: expect_error(
        -32004, stranger.call, "upload_logfile", task=task_id, name="stdout", data=bomb))
    assert grew_kib * 1024 < LOG_MAX, \
        f"a caller without the task made the server grow by {grew_kib / 1024:.0f} MiB"

    latencies: list[float] = []
    done = threading.Event()

    def echo_meanwhile() -> None:
        echo = srv.client(retries=0)
        while not done.is_set():
            started = time.monotonic()
            assert echo.call("echo", value=1) == 1
            latencies.append(time.monotonic() - started)
            time.sleep(0.005)

    watcher = threading.Thread(target=echo_meanwhile)
    watcher.start()
    try:
        time.sleep(0.2)
        refused, grew_kib = _peak_growth_kib(pid, lambda: expect_error(
            -32602, pilot.call, "upload_logfile", task=task_id, name="stdout", data=bomb))
        time.sleep(0.2)
    finally:
        done.set()
        watcher.join(30)
    assert "log_max_bytes" in refused.message + str(refused.data), refused.data
    assert grew_kib * 1024 < LOG_MAX, \
        f"the server grew by {grew_kib / 1024:.0f} MiB inflating the bomb"
    assert len(latencies) >= 10, latencies
    assert max(latencies) < 0.1, f"echo took {max(latencies):.3f} s during the bomb"

    logs = srv.client().call("public_get_task", task_id=task_id)["logs"]
    assert [log["name"] for log in logs] == ["stdlog"], logs
    assert sorted(p.relative_to(srv.data_dir)
                  for p in (Path(srv.data_dir) / "logs").rglob("*")) == files_before
    # the holder may go on: its next log is stored
    pilot.call("upload_logfile", task=task_id, name="stdout", data="after the bomb\n")
    logs = {log["name"]: log for log in srv.client().call("public_get_task",
                                                          task_id=task_id)["logs"]}
    assert logs["stdout"]["tail"].strip() == "after the bomb"
