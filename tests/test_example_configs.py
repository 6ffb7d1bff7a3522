"""The example configs of ``conf/examples`` in IceProd 2's format: accepted as they are, run
in dependency order, GPU tasks only to GPU pilots, and run to completion by the reference
pilot, whose stand-in modules leave files that show each step saw its predecessor's output.

``simulation.json`` is generate -> propagate -> photons (GPU) -> detector, where detector
also depends on generate (by index). ``multi_tray.json`` runs a tray four times between two
others; ``filtering.json`` is unpack -> level2 (two modules) -> level3.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from iceprod_server.client import IceProdClient
from tests.support.datasets import REPO, counts, offer, task_options, wait_until
from tests.support.servers import ServerProcess, iceprod_server, start_pilot, wait_pilots

EXAMPLES = REPO / "conf" / "examples"
ICEPROD2_STYLE = ("simulation.json", "multi_tray.json", "filtering.json")
NJOBS = 2
DEFAULT_OUTROOT = "file:///tmp/iceprod-examples"


def load(name: str, outroot: Path | None = None) -> dict[str, Any]:
    """An example config; with ``outroot``, its files go there instead of /tmp."""
    config: dict[str, Any] = json.loads((EXAMPLES / name).read_text())
    if outroot is not None:
        params = config["steering"]["parameters"]
        assert params["outroot"] == DEFAULT_OUTROOT, params
        params["outroot"] = f"file://{outroot}"
    return config


def dependencies(config: dict[str, Any]) -> dict[str, list[str]]:
    """Task name -> names of the tasks it depends on, read from the config (by name or
    by index, as the config writes them)."""
    names = [t["name"] for t in config["tasks"]]
    return {t["name"]: [names[d] if isinstance(d, int) else d for d in t["depends"]]
            for t in config["tasks"]}


def gpu_tasks(config: dict[str, Any]) -> set[str]:
    return {t["name"] for t in config["tasks"] if (t["requirements"].get("gpu") or 0) >= 1}


def statuses(client: IceProdClient, dataset_id: str, job: int) -> dict[str, str]:
    items = client.call("public_get_tasks", dataset_id=dataset_id, job_index=job)["items"]
    return {t["name"]: t["status"] for t in items}


def test_examples_are_in_iceprod2_format() -> None:
    """What the IceProd 2 configs have, the bundled examples show: dependencies, a GPU
    requirement, steering parameters used through $(...) and $steering(...), data entries,
    classes, a batchsys section, several trays and iterations."""
    sim, multi, filt = (load(name) for name in ICEPROD2_STYLE)
    assert [t["name"] for t in sim["tasks"]] == ["generate", "propagate", "photons", "detector"]
    assert dependencies(sim) == {"generate": [], "propagate": ["generate"],
                                 "photons": ["propagate"], "detector": ["photons", "generate"]}
    assert gpu_tasks(sim) == {"photons"}
    assert sim["tasks"][2]["batchsys"], "the GPU task should say what its batch system needs"
    for config in (sim, multi, filt):
        assert config["version"] == 3 and config["steering"]["parameters"]
        text = json.dumps(config["tasks"])
        assert "$(" in text and "$steering(" in text
        for t in config["tasks"]:
            assert "classes" in t and t["data"], t["name"]
            for tray in t["trays"]:
                for module in tray["modules"]:
                    assert module["src"] and module["note"], module["name"]
    iterations = [tray["iterations"] for tray in multi["tasks"][0]["trays"]]
    assert len(iterations) == 3 and iterations[1] == 4
    assert dependencies(filt) == {"unpack": [], "level2": ["unpack"], "level3": ["level2"]}
    assert len(filt["tasks"][1]["trays"][0]["modules"]) == 2


def test_examples_readme_names_every_example() -> None:
    readme = (EXAMPLES / "README.md").read_text()
    for path in EXAMPLES.glob("*.json"):
        assert re.search(rf"^- `{re.escape(path.name)}`: \S", readme, re.M), \
            f"conf/examples/README.md has no line for {path.name}"


def test_submit_help_lists_the_bundled_examples() -> None:
    text = iceprod_server("submit", "--help").stdout
    for path in EXAMPLES.glob("*.json"):
        assert re.search(rf"^\s+{re.escape(path.name)}\s+\S", text, re.M), \
            f"{path.name} is not listed by submit --help:\n{text}"


class RawPilot:
    """A pilot made of raw new_task / finish_task calls that checks every claim against
    the config: each dependency of the claimed task is complete, GPU tasks only when a GPU
    is offered."""

    def __init__(self, srv: ServerProcess, key: str, name: str, gpu: int, cpu: int,
                 configs: dict[str, dict[str, Any]]) -> None:
        self.client = srv.client(key, pilot_ref=name)
        self.watcher = srv.client()
        self.name = name
        self.resources = offer(cpu=cpu, gpu=gpu, memory=16.0, disk=200.0, time=24.0)
        self.gpu = gpu
        self.configs = configs  # dataset id -> config
        self.ran: list[str] = []

    def cycle(self) -> int:
        claimed = self.client.call("new_task", **self.resources)
        for desc in claimed:
            opts = task_options(desc)
            config = self.configs[opts["dataset_id"]]
            if opts["task"] in gpu_tasks(config):
                assert self.gpu, f"{self.name}, offering no GPU, got {opts['task']}: {opts}"
                assert opts["resources"]["gpu"] >= 1
            state = statuses(self.watcher, opts["dataset_id"], opts["job"])
            for dep in dependencies(config)[opts["task"]]:
                assert state[dep] == "complete", \
                    f"{opts['task']} of job {opts['job']} claimed while {dep} is {state[dep]}"
        for desc in claimed:
            opts = task_options(desc)
            self.client.call("finish_task", task_id=opts["task_id"], attempt=opts["attempt"],
                             stats={"hostname": self.name, "time_used": 1.0})
            self.ran.append(opts["task"])
        return len(claimed)


def submit_examples(srv: ServerProcess, owner: IceProdClient) -> dict[str, dict[str, Any]]:
    """Each IceProd 2 style example, checked to be stored exactly as submitted."""
    submitted = {}
    for name in ICEPROD2_STYLE:
        config = load(name)
        dataset_id = owner.call("submit_dataset", config=config,
                                description=config["description"], njobs=NJOBS)
        stored = srv.client().call("public_get_dataset_config", dataset_id=dataset_id)
        assert stored == config, f"{name} was not stored exactly as submitted"
        submitted[dataset_id] = config
    return submitted


def test_examples_run_in_dependency_order_gpu_tasks_only_on_gpus(server: Any,
                                                                 db_url: str) -> None:
    srv = server(db_url)
    owner = srv.client(srv.deployment.passkey("user", "alice"))
    pilot_key = srv.deployment.passkey("pilot")
    ntasks = {name: len(load(name)["tasks"]) for name in ICEPROD2_STYLE}

    # phase 1: a CPU pilot alone runs everything but photons, which waits for a GPU;
    # detector, which needs photons, is not claimable either
    first = submit_examples(srv, owner)
    cpu_pilot = RawPilot(srv, pilot_key, "cpu-pilot", gpu=0, cpu=2, configs=first)
    sim_id = next(d for d, c in first.items() if gpu_tasks(c))
    expected = {d: ({"complete": 2 * NJOBS, "queued": NJOBS} if d == sim_id
                    else {"complete": len(c["tasks"]) * NJOBS}) for d, c in first.items()}

    def cpu_progress() -> bool:
        cpu_pilot.cycle()
        return all({k: v for k, v in counts(srv.client(), d).items() if k != "idle"
                    and k != "waiting"} == e for d, e in expected.items())

    wait_until("all but the GPU task and what follows it to complete", cpu_progress, 60)
    for _ in range(3):  # photons is queued and claimable, but not by this pilot
        assert cpu_pilot.cycle() == 0
    assert "photons" not in cpu_pilot.ran and "detector" not in cpu_pilot.ran
    for job in range(NJOBS):
        assert statuses(srv.client(), sim_id, job)["photons"] == "queued"

    # a GPU pilot takes photons, then detector becomes claimable
    gpu_pilot = RawPilot(srv, pilot_key, "gpu-pilot", gpu=1, cpu=1, configs=first)
    wait_until("the GPU pilot to finish the simulation", lambda: gpu_pilot.cycle() == 0 and
               counts(srv.client(), sim_id) == {"complete": ntasks["simulation.json"] * NJOBS},
               60)
    assert sorted(gpu_pilot.ran) == sorted(["photons", "detector"] * NJOBS)

    # phase 2: a GPU pilot alone from the start, claiming up to three tasks at once; every
    # claim is checked against the state of its job's dependencies
    second = submit_examples(srv, owner)
    gpu_only = RawPilot(srv, pilot_key, "gpu-only", gpu=1, cpu=3, configs=second)
    wait_until("the GPU pilot to run everything", lambda: gpu_only.cycle() == 0 and all(
        counts(srv.client(), d) == {"complete": len(c["tasks"]) * NJOBS}
        for d, c in second.items()), 90)
    expected_names = [t["name"] for c in second.values() for t in c["tasks"]] * NJOBS
    assert sorted(gpu_only.ran) == sorted(expected_names)


def run_pilots(srv: ServerProcess, key: str, tmp_path: Path) -> Path:
    """Two reference pilots, one offering a GPU, until there is no more work; returns the
    first one's log."""
    pilots = [start_pilot(srv.url, key, tmp_path / "pilots", f"node{i}", "--exit-when-idle",
                          "8", "--cpu", "2", "--gpu", str(gpu), "--memory", "8", "--disk",
                          "10", "--time", "2", "--poll-interval", "1", "--heartbeat", "5")
              for i, gpu in enumerate((0, 1))]
    wait_pilots(pilots)
    return pilots[0][1]


@pytest.mark.parametrize("name", ICEPROD2_STYLE)
def test_example_runs_to_completion_with_the_reference_pilot(server: Any, sqlite_url: str,
                                                             tmp_path: Path,
                                                             name: str) -> None:
    srv = server(sqlite_url)
    user_key = srv.deployment.passkey("user", "alice")
    outroot = tmp_path / "out"
    config_path = tmp_path / name
    config_path.write_text(json.dumps(load(name, outroot)))
    dataset_id = iceprod_server("submit", str(config_path), "--njobs", str(NJOBS), "--url",
                                srv.url, "--passkey", user_key).stdout.strip()

    pilot_log = run_pilots(srv, srv.deployment.passkey("pilot"), tmp_path)

    client = srv.client()
    ntasks = len(load(name)["tasks"])
    got = counts(client, dataset_id)
    assert got == {"complete": ntasks * NJOBS}, \
        f"{name}: {got}; pilot log:\n{pilot_log.read_text()[-3000:]}"
    number = client.call("public_get_dataset", dataset_id=dataset_id)["dataset_num"]
    CHECKS[name](outroot, number)


def _read(path: Path) -> Any:
    assert path.exists(), f"missing output {path}"
    return json.loads(path.read_text())


def _check_simulation(outroot: Path, number: int) -> None:
    config = load("simulation.json")
    showers = config["steering"]["parameters"]["CORSIKA::showers"]
    for job in range(NJOBS):
        result = _read(outroot / f"simulation-{number}" / f"detector_{job}.json")
        assert result["job"] == job and result["generated"] == showers, result
        assert 0 < result["triggered"] <= showers, result
        photons = _read(outroot / f"simulation-{number}" / f"job-{job}" / "photons.json")
        assert all("photons" in e for e in photons["events"])


def _check_multi_tray(outroot: Path, number: int) -> None:
    per = load("multi_tray.json")["steering"]["parameters"]["samples_per_iteration"]
    for job in range(NJOBS):
        result = _read(outroot / f"multi-tray-{number}" / f"checked_{job}.json")
        assert result["iterations"] == [0, 1, 2, 3] and result["count"] == 4 * per, result
        assert result["ok"] is True and result["job"] == job


def _check_filtering(outroot: Path, number: int) -> None:
    params = load("filtering.json")["steering"]["parameters"]
    run = params["run"]
    for job in range(NJOBS):
        level2 = _read(outroot / f"filtering-{number}" / f"Run{run}_Subrun{job}"
                       / f"Level2_Run{run}_Subrun{job}.json")
        level3 = _read(outroot / f"filtering-{number}" / f"Level3_Run{run}_Subrun{job}.json")
        assert (level3["run"], level3["subrun"]) == (run, job)
        assert all(e["qtot"] >= params["FILTER::qmin"] for e in level2["events"])
        assert all(e["zenith"] <= params["L3::zenith_max"] for e in level3["events"])
        assert 0 < len(level3["events"]) <= len(level2["events"]) < 200


CHECKS = {"simulation.json": _check_simulation, "multi_tray.json": _check_multi_tray,
          "filtering.json": _check_filtering}
