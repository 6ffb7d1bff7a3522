"""IceProd 2.3.2's submission and reads, as its client library calls them: every method
once with its params positional (``args``) and once by name, with 2.3.2's answer shape
checked against what was submitted and done.

The module's server works one dataset to completion with an IceProd 2 pilot first (one
task fails once); every other dataset of the module needs 2 GPUs, which no pilot here
offers, so nothing else is ever claimed. One server per database backend.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from typing import Any

import pytest

from iceprod_server.client import IceProdClient
from tests.compat.iceprod2 import Iceprod2Pilot
from tests.compat.iceprod2_client import JSONRPC, refused
from tests.compat.iceprod2_configs import iceprod2_config, iceprod2_task
from tests.support import jsonrpc
from tests.support.datasets import wait_until
from tests.support.servers import ServerProcess, http_get

SITE_ID = "ip2-site-7"
NOBODY = "00000000000000000000"
# stats the pilot reports for each task name: time used, cpu and gpu used
WORK = {"ip2-gen": (12.0, 1.0, 0), "ip2-fil": (30.0, 3.0, 1)}


@dataclass
class World:
    srv: ServerProcess
    alice_key: str
    alice: JSONRPC
    anon: JSONRPC
    ours: IceProdClient  # this server's own client, as an admin
    worked: str  # dataset id, complete
    config: dict[str, Any]
    tasks: dict[str, list[str]]  # task name -> ids
    failed_once: str
    partial: str  # dataset id, nothing done


def _unclaimable(name: str) -> dict[str, Any]:
    return iceprod2_task(name, requirements={"gpu": 2})


def _work(srv: ServerProcess, pilot_key: str, worked: str) -> tuple[dict[str, list[str]], str]:
    pilot = Iceprod2Pilot(srv.port, pilot_key)
    tasks: dict[str, list[str]] = {}
    failed_once = ""
    done = 0
    while done < 4:
        got = wait_until("a task of the worked dataset", lambda: pilot.new_task(
            cpu=1, gpu=1, memory=4.0))
        options = got[0]["options"]
        assert options["dataset_id"] == worked, options
        task_id, name = options["task_id"], options["task"]
        if not failed_once:
            pilot.task_error(task_id, "ip2 first attempt fails")
            failed_once = task_id
            continue
        used, cpu, gpu = WORK[name]
        pilot.call("finish_task", task_id=task_id, stats={
            "hostname": "node1.test.grid", "time_used": used,
            "resources": {"cpu": cpu, "gpu": gpu, "memory": 0.5, "disk": 0.1, "time": 0.01}})
        tasks.setdefault(name, []).append(task_id)
        done += 1
    return tasks, failed_once


@pytest.fixture(scope="module")
def world(module_server: Any, module_db_url: str) -> World:
    srv: ServerProcess = module_server(module_db_url, env={
        "ICEPROD_GRAPH_INTERVAL": "1", "ICEPROD_SITE_ID": SITE_ID})
    dep = srv.deployment
    alice_key = dep.passkey("user", "alice")
    alice = JSONRPC(srv.rpc_url, passkey=alice_key)
    ours = srv.client(dep.passkey("admin", "admin1"))
    cfg = iceprod2_config(iceprod2_task("ip2-gen", requirements={"memory": 3.25}),
                          iceprod2_task("ip2-fil", depends=["ip2-gen"],
                                        requirements={"gpu": 1}),
                          description="worked")
    worked = alice.submit_dataset(config=cfg, njobs=2, description="the worked dataset")
    tasks, failed_once = _work(srv, dep.passkey("pilot"), worked)
    wait_until("the worked dataset to complete", lambda: ours.call(
        "public_get_number_of_tasks_in_each_state", dataset_id=worked) == {"complete": 4})
    partial = alice.submit_dataset(iceprod2_config(_unclaimable("ip2-partial")), njobs=3,
                                   description="nothing done")
    wait_until("the partial dataset's tasks to be made", lambda: len(ours.call(
        "public_get_tasks", dataset_id=partial)["items"]) == 3)
    return World(srv, alice_key, alice, JSONRPC(srv.rpc_url), ours, worked, cfg, tasks,
                 failed_once, partial)


def _both(fn: Any, name: str, value: Any) -> Any:
    """Call ``fn`` positionally and by ``name``; both answers must be equal."""
    positional = fn(value)
    named = fn(**{name: value})
    assert positional == named, (positional, named)
    return positional


def _zero_params(w: World, method: str) -> Any:
    """A method without params, called as the library does (no args) and with an empty
    ``args`` list; both answers must be equal."""
    plain = getattr(w.anon, method)()
    answer = jsonrpc.request(w.srv.rpc_url, method, {"args": [], "passkey": None})
    assert answer.get("result") == plain, (answer, plain)
    return plain


# --- submission ---------------------------------------------------------------------------

def test_submit_dataset(world: World) -> None:
    w = world
    cfg = iceprod2_config(_unclaimable("ip2-sub"), description="submitted")
    # 2.3.2's order: config, difplus, description, gridspec, njobs, stat_keys, debug
    positional = w.alice.submit_dataset(cfg, "<DIF_Plus>positional</DIF_Plus>",
                                        "by position", "", 4, ["time_used"], True)
    named = w.alice.submit_dataset(config=json.dumps(cfg), difplus="", description="by name",
                                   njobs=2, gridspec="osg", stat_keys=[], debug=False)
    for dataset_id in (positional, named):
        assert isinstance(dataset_id, str) and len(dataset_id) == 20, dataset_id
    got = {d: w.ours.call("public_get_dataset", dataset_id=d) for d in (positional, named)}
    assert [(g["description"], g["njobs"], g["gridspec"], g["stat_keys"], g["debug"])
            for g in got.values()] == [("by position", 4, "", ["time_used"], True),
                                       ("by name", 2, "osg", [], False)], got
    assert w.alice.public_get_config(positional) == cfg
    assert w.alice.public_get_config(named) == cfg  # JSON text, stored as its object
    status, page = http_get(w.srv.port, f"/dataset/{positional}")
    assert status == 200 and b"&lt;DIF_Plus&gt;positional&lt;/DIF_Plus&gt;" in page
    status, page = http_get(w.srv.port, f"/dataset/{named}")
    assert status == 200 and b"DIF plus" not in page


def test_update_dataset_config(world: World) -> None:
    w = world
    dataset_id = w.alice.submit_dataset(iceprod2_config(_unclaimable("ip2-upd")), njobs=1)
    changed = iceprod2_config(_unclaimable("ip2-upd"), steering={
        "parameters": {"energy": "10 TeV"}, "batchsys": None, "system": {},
        "resources": [], "data": []})
    assert w.alice.update_dataset_config(dataset_id, changed, "first change") is None
    assert w.alice.public_get_config(dataset_id) == changed
    assert w.alice.public_get_dataset_description(dataset_id) == "first change"
    changed["steering"]["parameters"]["energy"] = "100 TeV"
    assert w.alice.update_dataset_config(dataset_id=dataset_id, config=json.dumps(changed),
                                         description="second change") is None
    assert w.alice.public_get_dataset_steering(dataset_id)["parameters"] == \
        {"energy": "100 TeV"}
    assert w.alice.public_get_dataset_description(dataset_id) == "second change"
    # this server's own clients still get its answer
    ours = w.srv.client(w.alice_key).call("update_dataset_config", dataset_id=dataset_id,
                                          config=changed)
    assert ours["dataset_id"] == dataset_id and "status" in ours, ours


# --- datasets and configs -----------------------------------------------------------------

def test_config_description_steering(world: World) -> None:
    w = world
    assert _both(w.anon.public_get_config, "dataset_id", w.worked) == w.config
    assert _both(w.anon.public_get_dataset_description, "dataset_id", w.worked) == \
        "the worked dataset"
    assert _both(w.anon.public_get_dataset_steering, "dataset_id", w.worked) == \
        w.config["steering"]
    no_steering = w.alice.submit_dataset(iceprod2_config(_unclaimable("ip2-nost"),
                                                         steering=None), description="")
    assert w.anon.public_get_dataset_steering(no_steering) == {}
    assert w.anon.public_get_dataset_description(no_steering) == ""
    # an id that names no dataset: an error a script sees, not an empty answer
    error = refused(w.anon.public_get_config, NOBODY)
    assert error["code"] == -32003, error


def test_all_config(world: World) -> None:
    w = world
    configs = _zero_params(w, "public_get_all_config")
    assert configs[w.worked] == w.config
    assert set(configs) == {d["dataset_id"] for d in w.ours.call(
        "public_get_datasets", limit=1000)["items"]}


def test_datasets_by_status(world: World) -> None:
    w = world
    complete = _both(w.anon.public_get_datasets_by_status, "status", "complete")
    processing = _both(w.anon.public_get_datasets_by_status, "status", "processing")
    assert w.worked in complete and w.partial not in complete, complete
    assert w.partial in processing and w.worked not in processing, processing
    assert all(isinstance(d, str) for d in complete + processing)
    error = refused(w.anon.public_get_datasets_by_status, "finished")
    assert error["code"] == -32602 and "status" in error["data"]["reason"], error
    # without a status, this server's grouping as before
    assert w.worked in w.ours.call("public_get_datasets_by_status")["complete"]


def test_completion(world: World) -> None:
    w = world
    assert _both(w.anon.public_get_dataset_completion, "dataset_id", w.worked) == 1.0
    assert _both(w.anon.public_get_dataset_completion, "dataset_id", w.partial) == 0.0
    everything = _zero_params(w, "public_get_all_dataset_completion")
    assert everything[w.worked] == 1.0 and everything[w.partial] == 0.0, everything
    assert all(isinstance(v, float) for v in everything.values()), everything
    # this server's own clients still get the whole summary
    assert w.ours.call("public_get_dataset_completion", dataset_id=w.worked)["complete"] == 4
    assert _both(w.anon.public_get_number_of_tasks_in_each_state, "dataset_id",
                 w.worked) == {"complete": 4}


# --- tasks --------------------------------------------------------------------------------

def test_task_ids(world: World) -> None:
    w = world
    made = sorted(t["task_id"] for t in w.ours.call("public_get_tasks",
                                                    dataset_id=w.partial)["items"])
    assert _both(w.anon.public_get_task_ids, "dataset_id", w.partial) == made
    worked = _both(w.anon.public_get_task_ids, "dataset_id", w.worked)
    assert worked == sorted(w.tasks["ip2-gen"] + w.tasks["ip2-fil"])


def test_tasks_by_name_and_requirements(world: World) -> None:
    w = world
    gen = sorted(w.tasks["ip2-gen"])
    assert _both(w.anon.public_get_tasks_by_name, "task_name", "ip2-gen") == gen
    assert w.anon.public_get_tasks_by_name("no-such-task") == []
    # 2.3.2's spelling of the param; the definition of ip2-gen asked for 3.25 GB
    assert _both(w.anon.public_get_tasks_by_requirements, "task_reqirements",
                 '"memory": 3.25') == gen
    assert w.anon.public_get_tasks_by_requirements('"gpu": 1') == sorted(w.tasks["ip2-fil"])


def test_task_walltime_and_stats(world: World) -> None:
    w = world
    fil = w.tasks["ip2-fil"][0]
    assert _both(w.anon.public_get_task_walltime, "task_id", fil) == [[30.0]]
    assert _both(w.anon.public_get_task_walltime, "task_id", w.failed_once) == [[12.0]]
    not_run = w.ours.call("public_get_tasks", dataset_id=w.partial)["items"][0]["task_id"]
    assert w.anon.public_get_task_walltime(not_run) == [[0.0]]

    rows = _both(w.anon.public_get_task_stats, "task_id", w.failed_once)
    assert len(rows) == 2 and all(len(r) == 1 and isinstance(r[0], str) for r in rows), rows
    failure, success = (json.loads(r[0]) for r in rows)
    assert failure["error"] is True and failure["error_summary"] == "ip2 first attempt fails"
    datetime.datetime.fromisoformat(failure["time"])
    assert success["time_used"] == 12.0 and success["resources"]["cpu"] == 1.0, success
    assert "error" not in success
    assert w.anon.public_get_task_stats(not_run) == []
    # by dataset, this server's summary per task name as before
    by_name = w.ours.call("public_get_task_stats", dataset_id=w.worked)
    assert by_name["ip2-gen"]["count"] == 2 and by_name["ip2-gen"]["failed"] == 1, by_name


def test_cpu_gpu_usage(world: World) -> None:
    w = world
    # the means over the four successful attempts: cpu 1, 1, 3, 3 and gpu 0, 0, 1, 1
    assert _both(w.anon.public_get_cpu_gpu_usage, "dataset_id", w.worked) == [2.0, 0.5]
    assert _both(w.anon.public_get_cpu_gpu_usage, "dataset_id", w.partial) == [0.0, 0.0]


def test_site_id(world: World) -> None:
    assert _zero_params(world, "public_get_site_id") == SITE_ID


def test_graphs(world: World) -> None:
    """Points every interval (1 s here): completions per interval add up to the four
    finishes, and a task held by a pilot shows among the active tasks."""
    w = world

    def completions() -> int:
        return sum(p["value"]["completions"] for p in w.anon.public_get_graphs(60)
                   if p["name"] == "completed_tasks")

    wait_until("the four finishes in the graph points", lambda: completions() == 4)
    held = w.alice.submit_dataset(iceprod2_config(iceprod2_task("ip2-held")), njobs=1)
    pilot = Iceprod2Pilot(w.srv.port, w.srv.deployment.passkey("pilot"))
    got = wait_until("the held task to be claimed", lambda: pilot.new_task(gpu=0))
    assert got[0]["options"]["dataset_id"] == held
    claimed = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)

    def active_after_claim() -> list[dict[str, Any]]:
        return [p for p in w.anon.public_get_graphs(start=5)
                if p["name"] == "active_tasks" and p["value"].get("processing") == 1
                and datetime.datetime.fromisoformat(p["timestamp"]) > claimed]

    wait_until("a point with the held task processing", active_after_claim)
    points = _both(w.anon.public_get_graphs, "start", 60)
    assert points, points
    stamps = [p["timestamp"] for p in points]
    assert stamps == sorted(stamps), stamps
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    for p in points:
        assert set(p) == {"name", "value", "timestamp"}, p
        assert p["name"] in ("active_tasks", "completed_tasks"), p
        age = now - datetime.datetime.fromisoformat(p["timestamp"])
        assert datetime.timedelta(0) <= age < datetime.timedelta(minutes=60), p
        if p["name"] == "active_tasks":
            assert not set(p["value"]) & {"idle", "waiting", "complete"}, p
        else:
            assert set(p["value"]) == {"completions"}, p
    # the last six seconds: the newest points only
    asked = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    recent = w.anon.public_get_graphs(0.1)
    assert 0 < len(recent) < len(points), (recent, len(points))
    assert all(asked - datetime.datetime.fromisoformat(p["timestamp"])
               <= datetime.timedelta(seconds=7) for p in recent), recent
    pilot.finish_task(got[0]["options"]["task_id"])
