"""Real inputs: the dataset configs of IceProd 2's own integration tests are accepted exactly
as they are, and run in order.

Each has ``background`` and ``generate``, then ``hits``, which needs a GPU and depends on
both. Pilots here are raw ``new_task`` calls, so every claim can be checked as it happens:
a pilot offering no GPU never gets ``hits``, and a GPU pilot gets ``hits`` of job N only
once ``background`` and ``generate`` of job N are complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from iceprod_server.client import IceProdClient
from tests.support.datasets import iceprod2_configs_dir, offer, wait_counts, wait_until
from tests.support.servers import ServerProcess

CONFIGS = ("corsika_he.json", "corsika_le.json", "numu_le.json")
NJOBS = 2


def load_configs() -> dict[str, Any]:
    folder = iceprod2_configs_dir()
    missing = [name for name in CONFIGS if not (folder / name).exists()]
    if missing:
        pytest.fail(f"IceProd 2 configs {missing} not found in {folder} (set ICEPROD2_CONFIGS "
                    "to the folder holding them)", pytrace=False)
    return {name: json.loads((folder / name).read_text()) for name in CONFIGS}


def statuses(client: IceProdClient, dataset_id: str, job: int) -> dict[str, str]:
    items = client.call("public_get_tasks", dataset_id=dataset_id, job_index=job)["items"]
    return {t["name"]: t["status"] for t in items}


class Pilot:
    """A pilot made of raw new_task / finish_task calls, checking every claim."""

    def __init__(self, srv: ServerProcess, key: str, name: str, gpu: int, cpu: int) -> None:
        self.client = srv.client(key, pilot_ref=name)
        self.watcher = srv.client()
        self.name = name
        self.resources = offer(cpu=cpu, gpu=gpu, memory=16.0, disk=200.0, time=24.0)
        self.gpu = gpu
        self.ran: list[str] = []

    def cycle(self) -> int:
        claimed = self.client.call("new_task", **self.resources)
        for desc in claimed:
            opts = desc["options"]
            if opts["task"] == "hits":
                assert self.gpu, f"{self.name}, offering no GPU, got hits: {opts}"
                # checked at claim time: both dependencies are complete already
                state = statuses(self.watcher, opts["dataset_id"], opts["job"])
                assert state["background"] == "complete" and state["generate"] == "complete", \
                    f"hits of job {opts['job']} claimed while its dependencies are {state}"
                assert opts["resources"]["gpu"] >= 1
        for desc in claimed:
            opts = desc["options"]
            self.client.call("finish_task", task_id=opts["task_id"], attempt=opts["attempt"],
                             stats={"hostname": self.name, "time_used": 1.0})
            self.ran.append(opts["task"])
        return len(claimed)


def test_iceprod2_configs_accepted_and_run_in_order(server: Any, db_url: str) -> None:
    srv = server(db_url)
    owner = srv.client(srv.deployment.passkey("user", "alice"))
    pilot_key = srv.deployment.passkey("pilot")
    configs = load_configs()

    def submit_all() -> dict[str, str]:
        ids = {}
        for name, cfg in configs.items():
            ids[name] = owner.call("submit_dataset", config=cfg,
                                   description=cfg["description"], njobs=NJOBS)
            stored = srv.client().call("public_get_dataset_config", dataset_id=ids[name])
            assert stored == cfg, f"{name} was not stored exactly as submitted"
        return ids

    # phase 1: only a CPU pilot. It runs background and generate; hits wait for a GPU.
    first = submit_all()
    cpu_pilot = Pilot(srv, pilot_key, "cpu-pilot", gpu=0, cpu=2)
    for dataset_id in first.values():
        expected = {"complete": 2 * NJOBS, "queued": NJOBS}

        def progress(dataset_id: str = dataset_id, expected: dict[str, int] = expected) -> Any:
            cpu_pilot.cycle()
            return wait_counts_now(srv.client(), dataset_id, expected)

        wait_until("background and generate to complete, hits to be queued", progress)
    for _ in range(3):  # hits are queued and claimable, but not by this pilot
        assert cpu_pilot.cycle() == 0
    assert "hits" not in cpu_pilot.ran and len(cpu_pilot.ran) == 2 * NJOBS * len(CONFIGS)

    # a GPU pilot takes them
    gpu_pilot = Pilot(srv, pilot_key, "gpu-pilot", gpu=1, cpu=1)
    wait_until("the GPU pilot to run every hits task", lambda: gpu_pilot.cycle() == 0 and all(
        wait_counts_now(srv.client(), d, {"complete": 3 * NJOBS}) for d in first.values()))
    assert sorted(gpu_pilot.ran) == ["hits"] * NJOBS * len(CONFIGS)

    # phase 2: a GPU pilot alone from the start, claiming up to three tasks at once; every
    # claim of hits is checked against the state of its job's other two tasks
    second = submit_all()
    gpu_only = Pilot(srv, pilot_key, "gpu-only", gpu=1, cpu=3)
    wait_until("the GPU pilot to run everything", lambda: gpu_only.cycle() == 0 and all(
        wait_counts_now(srv.client(), d, {"complete": 3 * NJOBS}) for d in second.values()))
    assert sorted(gpu_only.ran) == sorted(["background", "generate", "hits"]
                                          * NJOBS * len(CONFIGS))
    for dataset_id in second.values():
        wait_counts(srv.client(), dataset_id, {"complete": 3 * NJOBS})


def wait_counts_now(client: IceProdClient, dataset_id: str, expected: dict[str, int]) -> bool:
    got = client.call("public_get_number_of_tasks_in_each_state", dataset_id=dataset_id)
    return {k: v for k, v in got.items() if v} == expected


def test_configs_folder_is_found() -> None:
    folder = iceprod2_configs_dir()
    assert isinstance(folder, Path)
    assert set(CONFIGS) <= {p.name for p in folder.glob("*.json")}, folder
