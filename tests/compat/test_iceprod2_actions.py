"""IceProd 2.3.2's actions, accounts and server internals, as its client library calls
them: every method once positionally (``args``) and once by name, answered in 2.3.2's
shape, under this server's rules (roles, ownership), and 2.3.2's module control and
SQL-text site sync refused with what replaces them, changing nothing.

One server per database backend serves the module.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pytest

from iceprod_server.client import IceProdClient
from tests.compat.iceprod2 import Iceprod2Pilot
from tests.compat.iceprod2_client import JSONRPC, refused
from tests.compat.iceprod2_configs import iceprod2_config, iceprod2_task
from tests.support import jsonrpc
from tests.support.datasets import wait_until
from tests.support.servers import ServerProcess

ICEPROD2_NAMES = {
    "echo", "new_task", "set_processing", "stillrunning", "finish_task", "task_error",
    "upload_logfile", "update_pilot", "submit_dataset", "update_dataset_config",
    "set_dataset_status", "reset_dataset", "hard_reset_dataset", "suspend_dataset",
    "truncate_dataset", "reset_task", "resume_task", "suspend_task", "reset_jobs",
    "hard_reset_jobs", "suspend_jobs", "public_get_number_of_tasks_in_each_state",
    "public_get_datasets_by_status", "public_get_config", "public_get_all_config",
    "public_get_dataset_description", "public_get_dataset_steering", "public_get_task_ids",
    "public_get_tasks_by_name", "public_get_tasks_by_requirements",
    "public_get_task_walltime", "public_get_task_stats", "public_get_cpu_gpu_usage",
    "public_get_dataset_completion", "public_get_all_dataset_completion",
    "public_get_graphs", "public_get_site_id", "get_groups", "set_groups",
    "get_user_roles", "set_user_roles", "queue_master", "master_update",
    "master_get_tables"}


@dataclass
class World:
    srv: ServerProcess
    keys: dict[str, str]
    alice: JSONRPC
    bob: JSONRPC
    admin: JSONRPC
    ours: IceProdClient  # this server's own client, as an admin
    site: tuple[str, str]  # site id, site key


@pytest.fixture(scope="module")
def world(module_server: Any, module_db_url: str) -> World:
    srv: ServerProcess = module_server(module_db_url)
    dep = srv.deployment
    keys = {"alice": dep.passkey("user", "alice"), "bob": dep.passkey("user", "bob"),
            "admin": dep.passkey("admin", "admin1"), "pilot": dep.passkey("pilot")}
    fields = dict(line.split("=", 1) for line in
                  dep.cli("add-site", "ip2-peer").stdout.split() if "=" in line)
    return World(srv, keys, *(JSONRPC(srv.rpc_url, passkey=keys[k])
                              for k in ("alice", "bob", "admin")),
                 srv.client(keys["admin"]), (fields["site_id"], fields["site_key"]))


def _tasks(w: World, dataset_id: str, n: int) -> list[str]:
    items = wait_until(f"{n} tasks to be made", lambda: (
        page := w.ours.call("public_get_tasks", dataset_id=dataset_id)["items"])
        and len(page) == n and page)
    return sorted(t["task_id"] for t in items)


def _task(w: World, task_id: str) -> dict[str, Any]:
    task: dict[str, Any] = w.ours.call("public_get_task", task_id=task_id)
    return task


# --- task and dataset actions ----------------------------------------------------------------

def test_task_actions(world: World) -> None:
    w = world
    dataset_id = w.alice.submit_dataset(iceprod2_config(iceprod2_task("ip2-act")), njobs=3)
    first, second, third = _tasks(w, dataset_id, 3)
    wait_until("the tasks to be queued", lambda: all(
        _task(w, t)["status"] == "queued" for t in (first, second, third)))

    assert w.alice.suspend_task(first) is None
    assert w.alice.suspend_task(tasks=[second, third]) is None
    assert {_task(w, t)["status"] for t in (first, second, third)} == {"suspended"}
    # another user's tasks: refused, nothing changes
    for call in (lambda: w.bob.resume_task(first), lambda: w.bob.reset_task(tasks=[second])):
        assert refused(call)["code"] == -32002
    assert {_task(w, t)["status"] for t in (first, second, third)} == {"suspended"}

    assert w.alice.resume_task(first) is None
    assert w.alice.resume_task(tasks=[second]) is None
    wait_until("the resumed tasks to be queued again", lambda: [
        _task(w, t)["status"] for t in (first, second, third)] == [
        "queued", "queued", "suspended"])

    # a failure, then reset by hand: the failure count goes back to 0
    pilot = Iceprod2Pilot(w.srv.port, w.keys["pilot"])
    claimed = wait_until("a task to claim", pilot.new_task)[0]["options"]["task_id"]
    pilot.task_error(claimed, "ip2 failure")
    assert _task(w, claimed)["failures"] == 1
    assert w.alice.reset_task(claimed) is None
    assert _task(w, claimed)["failures"] == 0
    assert w.alice.reset_task(tasks=[third]) is None
    assert _task(w, third)["status"] in ("reset", "idle", "waiting", "queued")

    assert refused(w.alice.reset_task, "00000000000000000000")["code"] == -32003


def test_set_dataset_status(world: World) -> None:
    w = world
    dataset_id = w.alice.submit_dataset(iceprod2_config(iceprod2_task("ip2-status",
                                                                     requirements={"gpu": 2})))
    suspended = w.alice.set_dataset_status(dataset_id, "suspended")
    assert (suspended["dataset_id"], suspended["status"]) == (dataset_id, "suspended")
    resumed = w.alice.set_dataset_status(dataset_id=dataset_id, status="processing")
    assert resumed["status"] == "processing"
    assert w.ours.call("public_get_dataset", dataset_id=dataset_id)["status"] == "processing"
    error = refused(w.alice.set_dataset_status, dataset_id, "complete")
    assert error["code"] == -32602 and "status" in str(error["data"]), error
    assert refused(w.bob.set_dataset_status, dataset_id, "suspended")["code"] == -32002
    assert w.ours.call("public_get_dataset", dataset_id=dataset_id)["status"] == "processing"


# --- accounts ----------------------------------------------------------------------------

def test_groups(world: World) -> None:
    w = world
    assert w.admin.get_groups() == {}
    assert w.admin.set_groups(None, {"new": {"name": "ip2-sim", "description": "simulation",
                                             "priority": 2.0}}) is None
    groups = w.admin.get_groups()
    (sim_id, sim), = groups.items()
    assert sim == {"groups_id": sim_id, "name": "ip2-sim", "description": "simulation",
                   "priority": 2.0}, groups
    # update one, add one: the stored groups become exactly these
    assert w.admin.set_groups(groups={
        sim_id: {"name": "ip2-sim", "description": "simulation", "priority": 3.0},
        "x": {"name": "ip2-filter", "description": "", "priority": 1.0}}) is None
    groups = w.admin.get_groups()
    assert sorted((g["name"], g["priority"]) for g in groups.values()) == [
        ("ip2-filter", 1.0), ("ip2-sim", 3.0)], groups
    assert groups[sim_id]["priority"] == 3.0
    assert {g["name"] for g in w.ours.call("list_groups")} == {"ip2-filter", "ip2-sim"}

    # a group that a dataset uses cannot go; nothing changes
    w.srv.client(w.keys["alice"]).call("submit_dataset", config=iceprod2_config(
        iceprod2_task("ip2-grouped", requirements={"gpu": 2})), group="ip2-sim")
    error = refused(w.admin.set_groups, groups={
        k: v for k, v in groups.items() if v["name"] == "ip2-filter"})
    assert error["code"] == -32004 and "ip2-sim" in error["data"]["reason"], error
    assert w.admin.get_groups() == groups
    error = refused(w.admin.set_groups, groups={"a": {"name": "", "priority": -1}})
    assert error["code"] == -32602 and len(error["data"]["problems"]) == 2, error
    assert w.admin.get_groups() == groups
    # roles: only admins read or set groups
    assert refused(w.alice.get_groups)["code"] == -32002
    assert refused(w.alice.set_groups, groups={})["code"] == -32002
    assert w.admin.get_groups() == groups


def test_user_roles(world: World) -> None:
    w = world
    dep = w.srv.deployment
    carol_key = dep.passkey("user", "carol")
    assert w.admin.get_user_roles("alice") == {
        "user": {"roles_id": "user", "role_name": "user"}}
    assert w.admin.get_user_roles(username="admin1") == {
        "admin": {"roles_id": "admin", "role_name": "admin"}}
    assert refused(w.admin.get_user_roles, "nobody-here")["code"] == -32003

    assert w.admin.set_user_roles(None, "carol", ["admin"]) is None
    assert w.admin.get_user_roles("carol") == {
        "admin": {"roles_id": "admin", "role_name": "admin"}}
    assert {u["username"]: u["role"] for u in w.ours.call("list_users")}["carol"] == "admin"
    # no roles: the user is disabled, and their passkeys stop working
    assert w.admin.set_user_roles(username="carol", roles=[]) is None
    assert w.admin.get_user_roles(username="carol") == {}
    wait_until("carol's key to stop working", lambda: jsonrpc.error_code(jsonrpc.request(
        w.srv.rpc_url, "whoami", {}, passkey=carol_key)) == -32001)
    # 2.3.2 kept roles as comma-separated text
    assert w.admin.set_user_roles(username="carol", roles="user") is None
    assert w.admin.get_user_roles("carol") == {"user": {"roles_id": "user",
                                                        "role_name": "user"}}
    wait_until("carol's key to work again", lambda: jsonrpc.request(
        w.srv.rpc_url, "whoami", {}, passkey=carol_key).get("result", {}).get("username")
        == "carol")
    error = refused(w.admin.set_user_roles, username="carol", roles=["root"])
    assert error["code"] == -32602 and "root" in error["data"]["reason"], error
    assert refused(w.alice.set_user_roles, username="alice", roles=["admin"])["code"] \
        == -32002
    assert refused(w.alice.get_user_roles, "alice")["code"] == -32002
    assert w.admin.get_user_roles("alice") == {"user": {"roles_id": "user",
                                                        "role_name": "user"}}


# --- what is not served ---------------------------------------------------------------------

def test_module_control_is_refused_with_what_replaces_it(world: World) -> None:
    w = world
    for error in (refused(w.admin.start_module, "queue"),
                  refused(w.admin.stop_module, module_name="queue")):
        assert error["code"] == -32601, error
        reason = error["data"]["reason"]
        assert "SIGTERM" in reason and "SIGHUP" in reason and "iceprod.toml" in reason, reason
    for error in (refused(w.admin.update_config, "[queue]\nmax_resets = 3\n"),
                  refused(w.alice.update_config, config_text="x")):
        assert error["code"] == -32601, error
        assert "iceprod.toml" in error["data"]["reason"], error
    # a 2.3.2 pilot method this server does not serve
    assert refused(w.admin.task_kill, "00000000000000000000")["code"] == -32601


def test_sql_site_sync_is_refused_and_runs_nothing(world: World) -> None:
    w = world
    dataset_id = w.alice.submit_dataset(iceprod2_config(iceprod2_task(
        "ip2-sql", requirements={"gpu": 2})))
    (task_id,) = _tasks(w, dataset_id, 1)
    # where the scheduler leaves it (no pilot offers two GPUs): nothing else moves it
    status = wait_until("the task to be queued",
                        lambda: _task(w, task_id)["status"] == "queued" and "queued")
    sql = f"update task set status = 'complete' where task_id = '{task_id}'"
    update = [["task", task_id, "2017-01-01T00:00:00", sql, []]]
    site_id, site_key = w.site
    site = JSONRPC(w.srv.rpc_url, passkey=site_key)
    errors = [refused(site.master_update, update, site_id=site_id),
              refused(site.master_update, updates=update, site_id=site_id),
              refused(w.alice.master_update, update),
              refused(site.master_get_tables, ["task", "search"], site_id=site_id),
              refused(site.master_get_tables, tablenames=["task"], site_id=site_id)]
    for error in errors:
        assert error["code"] == -32602, error
        reason = error["data"]["reason"]
        assert "never runs SQL" in reason and "structured site protocol" in reason, reason
    assert "master_update(changes)" in errors[0]["data"]["reason"]
    assert "master_get_tables(tables, since)" in errors[3]["data"]["reason"]
    time.sleep(0.2)
    assert _task(w, task_id)["status"] == status
    # the structured protocol answers as before
    pushed = site.master_update(changes=[], site_id=site_id)
    assert pushed["results"] == [] and pushed["applied"] == 0, pushed
    pulled = site.master_get_tables(tables=["datasets"], since=None, site_id=site_id)
    assert "cursor" in pulled, pulled


def test_discover_marks_the_iceprod2_names(world: World) -> None:
    doc = world.ours.call("rpc.discover")
    marked = {m["name"]: m["x-iceprod2"] for m in doc["methods"] if "x-iceprod2" in m}
    assert set(marked) == ICEPROD2_NAMES, sorted(set(marked) ^ ICEPROD2_NAMES)
    assert marked["submit_dataset"]["params"] == [
        "config", "difplus", "description", "gridspec", "njobs", "stat_keys", "debug"]
    assert marked["public_get_tasks_by_requirements"]["params"] == ["task_reqirements"]
    assert marked["master_update"]["refused"] == ["updates"]
    not_served = {m["name"]: m for m in doc["x-iceprod2-not-served"]}
    assert set(not_served) == {"start_module", "stop_module", "update_config"}
    assert not_served["update_config"]["params"] == ["config_text"]
