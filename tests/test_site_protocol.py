"""The site methods at the master, called as a client site would (with its site key), and
``join`` / ``leave``: what a site may change and what it may not, versions and clocks,
authentication by key and by certificate DN.

The master runs on SQLite and on MariaDB (``db_url``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from iceprod_server.client import IceProdClient, RPCError
from iceprod_server.federation import hlc
from tests.support.databases import scalar
from tests.support.datasets import counts, submit, wait_until
from tests.support.federation import add_site, quick_config
from tests.support.http import fetch
from tests.support.jsonrpc import expect_error, request
from tests.support.servers import Deployment, iceprod_server, unused_port

HOUR_MS = 3600 * 1000
MINUTE_MS = 60 * 1000


def _version(site_id: str, ahead_ms: int = 0, counter: int = 0) -> str:
    return hlc.encode(int(time.time() * 1000) + ahead_ms, counter, site_id)


def _setup(server: Any, db_url: str, env: dict[str, str] | None = None) -> Any:
    master = server(db_url, env)
    user = master.client(master.deployment.passkey("user"))
    admin = master.client(master.deployment.passkey("admin"))
    return master, user, admin


def _site(master: Any, name: str) -> tuple[str, IceProdClient]:
    site_id, key = add_site(master.deployment, name)
    return site_id, master.client(key, retries=0)


def _pull(site: IceProdClient, dataset_id: str, num: int = 1) -> dict[str, Any]:
    return wait_until("a task for the site", lambda: (
        p if (p := site.call("queue_master", resources={}, num=num))["tasks"] else None))


def _local_counts(client: IceProdClient, dataset_id: str) -> dict[str, int]:
    """Task counts at a client site; none before the dataset arrived there."""
    try:
        return counts(client, dataset_id)
    except RPCError as e:
        if e.code == -32003:
            return {}
        raise


def _task_change(site_id: str, task: dict[str, Any], columns: dict[str, Any],
                 version: str) -> dict[str, Any]:
    return {"table": "tasks", "key": task["task_id"], "task_id": task["task_id"],
            "attempt": task["attempt"], "columns": columns, "version": version}


def test_a_site_changes_only_what_it_holds(server: Any, db_url: str) -> None:
    master, user, admin = _setup(server, db_url)
    dataset_id = submit(user, quick_config("a"), njobs=2)
    a_id, site_a = _site(master, "site-a")
    b_id, site_b = _site(master, "site-b")
    handed = _pull(site_a, dataset_id)
    task = handed["tasks"][0]
    # the rows the site needs come with the task
    assert [d["dataset_id"] for d in handed["datasets"]] == [dataset_id]
    assert handed["dataset_configs"] and handed["jobs"] and handed["task_defs"]
    before = user.call("public_get_task", task_id=task["task_id"])
    assert before["status"] == "processing"

    bad: list[dict[str, Any]] = [
        # another site's task
        _task_change(b_id, task, {"status": "complete"}, _version(b_id)),
        # a dataset row, a config, a job, a table that does not exist
        {"table": "datasets", "key": dataset_id, "task_id": task["task_id"], "attempt": 1,
         "columns": {"status": "complete"}, "version": _version(b_id)},
        {"table": "dataset_configs", "key": dataset_id, "task_id": task["task_id"],
         "attempt": 1, "columns": {"config": "{}"}, "version": _version(b_id)},
        {"table": "jobs", "key": handed["jobs"][0]["job_id"], "task_id": task["task_id"],
         "attempt": 1, "columns": {"status": "complete"}, "version": _version(b_id)},
        {"table": "users; DROP TABLE tasks", "key": "x", "task_id": "x", "attempt": 1,
         "columns": {"a": 1}, "version": _version(b_id)},
        "not an object",
    ]
    answer = site_b.call("master_update", changes=bad)
    assert [r["ok"] for r in answer["results"]] == [False] * len(bad)
    assert all(r["error"] for r in answer["results"])

    # the holder itself: columns it may not set, wrong types, another site's version
    own_bad = [
        _task_change(a_id, task, {"claimed_by": "site:x"}, _version(a_id)),
        _task_change(a_id, task, {"dataset_id": "other"}, _version(a_id)),
        _task_change(a_id, task, {"status": "complete", "failures": "many"}, _version(a_id)),
        _task_change(a_id, task, {"status": "exploded"}, _version(a_id)),
        _task_change(a_id, task, {"req_memory": -1}, _version(a_id)),
        _task_change(a_id, task, {"status": "complete"}, _version(b_id)),
        _task_change(a_id, task, {"status": "complete"}, "yesterday"),
        {**_task_change(a_id, task, {"status": "complete"}, _version(a_id)), "attempt": 99},
        {**_task_change(a_id, task, {"status": "complete"}, _version(a_id)), "sql": "x"},
    ]
    answer = site_a.call("master_update", changes=own_bad)
    assert [r["ok"] for r in answer["results"]] == [False] * len(own_bad), answer

    # a huge batch: every change refused, nothing applied
    huge = [_task_change(a_id, task, {"status": "complete"}, _version(a_id, counter=i))
            for i in range(1001)]
    answer = site_a.call("master_update", changes=huge)
    assert answer["applied"] == 0 and not any(r["ok"] for r in answer["results"])
    assert "at most 1000" in answer["results"][0]["error"]

    after = user.call("public_get_task", task_id=task["task_id"])
    assert (after["status"], after["attempt"]) == (before["status"], before["attempt"])
    assert counts(user, dataset_id).get("complete", 0) == 0
    status = {s["name"]: s for s in admin.call("site_status")}
    assert status["site-b"]["refused"] == len(bad)
    assert status["site-a"]["refused"] == len(own_bad) + 1001
    assert status["site-a"]["tasks_held"] == 1
    reasons = [r["reason"] for r in status["site-b"]["recent_refusals"]]
    assert any("not held" in r for r in reasons), reasons
    assert any("datasets" in r for r in reasons), reasons

    # and the holder's own outcome is taken, once
    good = _task_change(a_id, task, {"status": "complete", "failures": 0}, _version(a_id))
    assert site_a.call("master_update", changes=[good])["results"] == [
        {"ok": True, "outcome": "applied"}]
    assert site_a.call("master_update", changes=[good])["results"] == [
        {"ok": True, "outcome": "duplicate"}]
    assert user.call("public_get_task", task_id=task["task_id"])["status"] == "complete"


def test_a_clock_minutes_ahead_cannot_make_an_old_change_win(server: Any,
                                                             db_url: str) -> None:
    master, user, admin = _setup(server, db_url)
    dataset_id = submit(user, quick_config("a"), njobs=2)
    a_id, site_a = _site(master, "site-a")
    handed = _pull(site_a, dataset_id, num=2)
    first, second = handed["tasks"]
    # the site's clock runs four minutes ahead (within the master's five): its versions
    # say so
    ahead = int(time.time() * 1000) + 4 * MINUTE_MS  # one wall time, two counters
    newer = _task_change(a_id, first, {"status": "complete"}, hlc.encode(ahead, 5, a_id))
    older = _task_change(a_id, first, {"status": "reset", "failures": 1},
                         hlc.encode(ahead, 1, a_id))
    answer = site_a.call("master_update", changes=[newer, older])
    assert [r.get("outcome") for r in answer["results"]] == ["applied", "stale"]
    # a stale answer names the version the task has: the site stamps above it to go again
    assert answer["results"][1]["version"] == newer["version"]
    task = user.call("public_get_task", task_id=first["task_id"])
    assert (task["status"], task["failures"]) == ("complete", 0)
    # the master's clock follows the site's, so what it hands out next is newer still
    assert answer["version"] > newer["version"]
    offset = {s["name"]: s for s in admin.call("site_status")}["site-a"]["clock_offset"]
    assert 230 < offset < 250

    # the master takes the second task back; a change stamped two hours ahead is refused
    # for that (ownership comes first), not for its clock
    user.call("suspend_tasks", task_ids=[second["task_id"]])
    late = _task_change(a_id, second, {"status": "complete"}, _version(a_id, 2 * HOUR_MS))
    answer = site_a.call("master_update", changes=[late])
    assert answer["results"][0]["ok"] is False
    assert "not held" in answer["results"][0]["error"]
    assert "retry" not in answer["results"][0]
    assert user.call("public_get_task", task_id=second["task_id"])["status"] == "suspended"


def test_a_version_an_hour_ahead_is_refused_for_now_and_pulls_no_clock(server: Any,
                                                                      db_url: str) -> None:
    master, user, admin = _setup(server, db_url)
    dataset_id = submit(user, quick_config("a"), njobs=2)
    a_id, site_a = _site(master, "site-a")
    _, site_b = _site(master, "site-b")
    task = _pull(site_a, dataset_id)["tasks"][0]
    future = _task_change(a_id, task, {"status": "complete"}, _version(a_id, HOUR_MS))
    answer = site_a.call("master_update", changes=[future])
    result = answer["results"][0]
    # refused with the reason and the bound, and marked for the site to keep and stamp
    # again (its outcome must not be dropped)
    assert result["ok"] is False and result["retry"] is True, result
    assert "ahead of the master's clock" in result["error"], result
    assert "at most 300 s" in result["error"], result
    assert answer["applied"] == 0 and answer["refused"] == 1
    assert user.call("public_get_task", task_id=task["task_id"])["status"] == "processing"
    # the master's clock stayed with the wall clock, and so does what another site gets
    assert hlc.wall_seconds(answer["version"]) < time.time() + 60
    handed_b = _pull(site_b, dataset_id)
    assert hlc.wall_seconds(handed_b["version"]) < time.time() + 60
    status = {s["name"]: s for s in admin.call("site_status")}["site-a"]
    assert status["refused"] == 1
    assert "ahead of the master's clock" in status["recent_refusals"][0]["reason"]
    # the same outcome stamped again within the bound is taken
    again = _task_change(a_id, task, {"status": "complete"}, _version(a_id, MINUTE_MS))
    assert site_a.call("master_update", changes=[again])["results"] == [
        {"ok": True, "outcome": "applied"}]
    assert user.call("public_get_task", task_id=task["task_id"])["status"] == "complete"


def test_a_full_counter_carries_into_the_time(server: Any, db_url: str) -> None:
    master, user, _ = _setup(server, db_url)
    dataset_id = submit(user, quick_config("a"), njobs=2)
    a_id, site_a = _site(master, "site-a")
    first, second = _pull(site_a, dataset_id, num=2)["tasks"]
    # a version two minutes ahead whose counter is at its last six-digit value: the
    # master's clock takes it in, and its next versions must still be versions
    edge = hlc.encode(int(time.time() * 1000) + 2 * MINUTE_MS, 999_999, a_id)
    answer = site_a.call("master_update", changes=[
        _task_change(a_id, first, {"failures": 1}, edge)])
    assert answer["results"] == [{"ok": True, "outcome": "applied"}]
    wall, counter, site = hlc.parse(answer["version"])
    assert (wall, counter) > hlc.parse(edge)[:2] and site == "master"
    # the site takes the master's version in, as its link does, and goes on from it
    clock = hlc.HybridClock(a_id)
    clock.observe(answer["version"])
    answer = site_a.call("master_update", changes=[
        _task_change(a_id, first, {"status": "complete"}, clock.tick()),
        _task_change(a_id, second, {"status": "complete"}, clock.tick())])
    assert [r["outcome"] for r in answer["results"]] == ["applied", "applied"]
    hlc.parse(answer["version"])
    assert counts(user, dataset_id) == {"complete": 2}


def test_taken_back_tasks_and_dataset_edits_come_down(server: Any, db_url: str) -> None:
    master, user, _ = _setup(server, db_url)
    dataset_id = submit(user, quick_config("a"), njobs=2)
    _, site_a = _site(master, "site-a")
    handed = _pull(site_a, dataset_id, num=2)
    first = site_a.call("master_get_tables", tables=["tasks", "datasets"], since=None)
    held = {t["task_id"]: t["held"] for t in first["tasks"]}
    assert held == {t["task_id"]: True for t in handed["tasks"]}
    user.call("set_dataset_priority", dataset_id=dataset_id, priority=7)
    edited = quick_config("a", stdout="edited")
    user.call("update_dataset_config", dataset_id=dataset_id, config=edited,
              description="edited")
    user.call("suspend_tasks", task_ids=[handed["tasks"][0]["task_id"]])
    down = site_a.call("master_get_tables", tables=["tasks", "datasets", "dataset_configs"],
                       since=first["cursor"])
    held = {t["task_id"]: t["held"] for t in down["tasks"]}
    assert held[handed["tasks"][0]["task_id"]] is False
    assert held.get(handed["tasks"][1]["task_id"], True) is True
    assert [d["priority"] for d in down["datasets"]] == [7]
    assert [c["dataset_id"] for c in down["dataset_configs"]] == [dataset_id]
    assert "print('edited '" in down["dataset_configs"][0]["config"]
    # a reset at the master takes a task back as well
    user.call("reset_tasks", task_ids=[handed["tasks"][1]["task_id"]])
    down = site_a.call("master_get_tables", tables=["tasks"], since=down["cursor"])
    held = {t["task_id"]: t["held"] for t in down["tasks"]}
    assert held[handed["tasks"][1]["task_id"]] is False
    expect_error(-32602, site_a.call, "master_get_tables", tables=["users"], since=None)


def test_the_down_sync_moves_past_a_dataset_suspended_at_once(server: Any,
                                                             db_url: str) -> None:
    master, user, _ = _setup(server, db_url, {"ICEPROD_MATERIALIZE_BATCH": "20000",
                                              "ICEPROD_QUEUE_DEPTH": "30000"})
    other = submit(user, quick_config("b"), njobs=1)
    big = submit(user, quick_config("a"), njobs=20000)
    _, site = _site(master, "site-a")
    wait_until("the 20,000 tasks to be queued", lambda: counts(user, big) == {
        "queued": 20000}, timeout=240, interval=1.0)
    # the site holds 6,000 of them, more than one answer carries, and the other dataset's
    # one task
    handed: list[dict[str, Any]] = []
    while len(handed) < 6001:
        handed += site.call("queue_master", resources={},
                            num=min(1000, 6001 - len(handed)))["tasks"]
    other_task = next(t["task_id"] for t in handed if t["dataset_id"] == other)
    assert sum(t["dataset_id"] == big for t in handed) == 6000

    def follow(cursor: Any, calls: int) -> tuple[dict[str, dict[str, Any]], Any]:
        seen: dict[str, dict[str, Any]] = {}
        for _ in range(calls):
            down = site.call("master_get_tables", tables=["tasks"], since=cursor)
            seen.update({t["task_id"]: t for t in down["tasks"]})
            cursor = down["cursor"]
        return seen, cursor

    seen, cursor = follow(None, 3)
    assert len(seen) == 6001 and all(t["held"] for t in seen.values())
    # the whole dataset suspended at once: every task of it stamped with one time
    user.call("suspend_dataset", dataset_id=big)
    # then the master takes back one more task: the site must hear of it
    user.call("reset_tasks", task_ids=[other_task])
    seen, cursor = follow(cursor, 4)
    assert other_task in seen and seen[other_task]["held"] is False, seen.get(other_task)
    assert sum(not t["held"] for t in seen.values()) == 6001
    # the first protocol's cursor, a time, still answers
    legacy = site.call("master_get_tables", tables=["tasks"], since=time.time())
    assert isinstance(legacy["tasks"], list) and isinstance(legacy["cursor"], dict)
    expect_error(-32602, site.call, "master_get_tables", tables=["tasks"],
                 since={"since": 1.0, "after": ["x", 1], "began": 2.0})


def test_a_log_in_pieces_is_stored_whole_once_its_last_piece_is_in(server: Any,
                                                                  db_url: str) -> None:
    master, user, _ = _setup(server, db_url)
    dataset_id = submit(user, quick_config("a"), njobs=1)
    a_id, site_a = _site(master, "site-a")
    task = _pull(site_a, dataset_id)["tasks"][0]
    text = "".join(f"line {i}: h\u00e9llo w\u00f6rld \u2713 \U0001f600\n" for i in range(20000))
    raw = text.encode()
    # cut on character boundaries, at about a third and two thirds
    cuts = [next(i for i in range(len(raw) * k // 3, len(raw)) if raw[i] & 0xC0 != 0x80)
            for k in (1, 2)]
    bounds = [0, *cuts, len(raw)]

    def piece(n: int, version: str, **extra: Any) -> dict[str, Any]:
        start, end = bounds[n], bounds[n + 1]
        columns = {"name": "stdout", "created": time.time(),
                   "data": raw[start:end].decode(), "offset": start, "end": end,
                   "size": len(raw), **extra}
        return {"table": "task_logs", "key": "77", "task_id": task["task_id"],
                "attempt": task["attempt"], "columns": columns, "version": version}

    version = _version(a_id)
    # a piece that does not continue what the master holds is not kept: the answer says
    # where to go on from
    answer = site_a.call("master_update", changes=[piece(1, version)])
    assert answer["results"] == [{"ok": True, "outcome": "piece", "received": 0}]
    results = site_a.call("master_update", changes=[piece(0, version)])["results"]
    assert results == [{"ok": True, "outcome": "piece", "received": cuts[0]}]
    # sent again (its answer was lost): nothing more is kept
    results = site_a.call("master_update", changes=[piece(0, version)])["results"]
    assert results == [{"ok": True, "outcome": "piece", "received": cuts[0]}]
    # bad pieces are refused and change nothing
    bad = [piece(1, version, offset=cuts[1], end=cuts[0]),
           piece(1, version, size="big"), piece(1, version, end=len(raw) + 1)]
    results = site_a.call("master_update", changes=bad)["results"]
    assert [r["ok"] for r in results] == [False] * 3, results
    assert expect_log_missing(master, task["task_id"])
    results = site_a.call("master_update", changes=[piece(1, version), piece(2, version)])[
        "results"]
    assert results == [{"ok": True, "outcome": "piece", "received": cuts[1]},
                       {"ok": True, "outcome": "applied"}]
    stored = fetch(master.port, "GET", f"/log/{task['task_id']}/stdout")
    assert stored.status == 200 and stored.body == raw
    detail = user.call("public_get_task", task_id=task["task_id"])
    assert [(log["name"], log["size"]) for log in detail["logs"]] == [("stdout", len(raw))]
    assert detail["logs"][0]["tail"].endswith("line 19999: h\u00e9llo w\u00f6rld \u2713 \U0001f600")
    # the last piece once more: the log is there, a duplicate
    results = site_a.call("master_update", changes=[piece(2, version)])["results"]
    assert results == [{"ok": True, "outcome": "duplicate"}]
    assert scalar(master.db_url, "SELECT COUNT(*) FROM site_log_pieces") == 0
    # a whole log over log_inline_max (256 KB) goes to a file as a pilot's would
    big = "x" * 300_000 + "\nend\n"
    whole = {"table": "task_logs", "key": "78", "task_id": task["task_id"],
             "attempt": task["attempt"], "version": version,
             "columns": {"name": "stderr", "created": time.time(), "data": big}}
    assert site_a.call("master_update", changes=[whole])["results"] == [
        {"ok": True, "outcome": "applied"}]
    assert fetch(master.port, "GET", f"/log/{task['task_id']}/stderr").body == big.encode()
    assert scalar(master.db_url, "SELECT COUNT(*) FROM task_logs WHERE path IS NOT NULL") == 2


def expect_log_missing(master: Any, task_id: str) -> bool:
    return fetch(master.port, "GET", f"/log/{task_id}/stdout").status == 404


def test_site_methods_need_a_site(server: Any, db_url: str) -> None:
    master, user, admin = _setup(server, db_url)
    for client in (user, admin, master.client(master.deployment.passkey("pilot"))):
        expect_error(-32002, client.call, "queue_master", resources={}, num=1)
        expect_error(-32002, client.call, "master_update", changes=[])
        expect_error(-32002, client.call, "master_get_tables", tables=["tasks"])
    expect_error(-32001, master.client("not-a-key", retries=0).call, "queue_master",
                 resources={}, num=1)
    _, site = _site(master, "site-a")
    expect_error(-32002, site.call, "site_status")
    assert isinstance(admin.call("site_status"), list)


def test_site_key_by_legacy_params_and_certificate_dn(server: Any, db_url: str) -> None:
    master = server(db_url, {"ICEPROD_TRUSTED_PROXY": "127.0.0.1"})
    site_id, key = add_site(master.deployment, "site-a")
    legacy = request(master.rpc_url, "whoami", {"passkey": key, "site_id": site_id})
    assert legacy["result"]["role"] == "site" and legacy["result"]["site_id"] == site_id
    dn = "/DC=org/DC=example/CN=site-b.example.org"
    master.deployment.cli("add-site", "site-b", "--cert-dn", dn)
    by_dn = request(master.rpc_url, "whoami", headers={"X-SSL-Client-DN": dn})
    assert by_dn["result"]["role"] == "site"
    # an unknown DN is just anonymous
    other = request(master.rpc_url, "whoami", headers={"X-SSL-Client-DN": "/CN=nobody"})
    assert other["result"]["role"] is None


def test_join_checks_the_key_and_leave_needs_nothing_held(server: Any, db_url: str,
                                                          tmp_path: Path) -> None:
    master = server(db_url)
    site_id, key = add_site(master.deployment, "site-a")
    client = Deployment.init(tmp_path / "client", "sqlite:///" + str(tmp_path / "c.db"))
    wrong = client.cli("join", "--master", master.url, "--site-id", site_id, "--key", "x" * 40,
                       check=False)
    assert wrong.returncode == 1 and "refused the site key" in wrong.stderr, wrong.stderr
    away = client.cli("join", "--master", f"http://127.0.0.1:{unused_port()}",
                      "--site-id", site_id, "--key", key, check=False)
    assert away.returncode == 1 and "cannot" in away.stderr, away.stderr
    assert "[site]" not in (client.data_dir / "iceprod.toml").read_text()

    joined = client.cli("join", "--master", master.rpc_url, "--site-id", site_id,
                        "--key", key)
    assert joined.returncode == 0
    text = (client.data_dir / "iceprod.toml").read_text()
    assert "[site]" in text and master.rpc_url in text
    again = client.cli("join", "--master", master.url, "--site-id", site_id, "--key", key,
                       check=False)
    assert again.returncode == 1

    # the joined client serves, pulls work, and may not leave while it holds it
    user = master.client(master.deployment.passkey("user"))
    dataset_id = submit(user, quick_config("a"), njobs=3)
    site_server = server(client.db_url, {"ICEPROD_SITE_INTERVAL": "0.3"}, deployment=client)
    local = site_server.client()
    wait_until("the client to pull the tasks",
               lambda: _local_counts(local, dataset_id).get("queued", 0) == 3, timeout=30)
    site_server.stop()
    held = client.cli("leave", check=False)
    assert held.returncode == 1 and "unfinished" in held.stderr, held.stderr
    assert "[site]" in (client.data_dir / "iceprod.toml").read_text()
    # once the master takes them back, the client may go
    user.call("suspend_dataset", dataset_id=dataset_id)
    site_server = server(client.db_url, {"ICEPROD_SITE_INTERVAL": "0.3"}, deployment=client)
    wait_until("the client to drop the tasks", lambda: counts(
        site_server.client(), dataset_id).get("queued", 0) == 0, timeout=30)
    site_server.stop()
    left = client.cli("leave")
    assert left.returncode == 0
    assert "[site]" not in (client.data_dir / "iceprod.toml").read_text()
    assert iceprod_server("leave", "--data-dir", str(client.data_dir),
                          check=False).returncode == 1
