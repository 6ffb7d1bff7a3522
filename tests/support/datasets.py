"""Dataset configs and pilot-side helpers shared by the tests."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from iceprod_server.client import IceProdClient

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]


def module(name: str, src: str = "python3", args: Any = "-c pass") -> dict[str, Any]:
    return {"name": name, "src": src, "args": args, "env_shell": None, "env_clear": True}


def task(name: str, depends: list[Any] | None = None,
         requirements: dict[str, Any] | None = None,
         modules: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "depends": depends or [],
        "requirements": requirements or {},
        "batchsys": None,
        "trays": [{"name": "tray", "iterations": 1,
                   "modules": modules if modules is not None else [module(name)]}],
        "data": [],
        "parameters": {},
    }


def config(*tasks: dict[str, Any], description: str = "test dataset") -> dict[str, Any]:
    """A version 3 dataset config holding ``tasks`` (one task "only" by default)."""
    return {
        "version": 3,
        "description": description,
        "options": {},
        "steering": {"parameters": {}, "batchsys": None, "system": {}, "resources": [],
                     "data": []},
        "tasks": list(tasks) or [task("only")],
        "difplus": None,
    }


def submit(client: IceProdClient, cfg: dict[str, Any] | None = None, njobs: int = 1,
           **kwargs: Any) -> str:
    """submit_dataset; returns the dataset id (checked to be a string)."""
    dataset_id = client.call("submit_dataset", config=cfg or config(),
                             description=kwargs.pop("description", "test dataset"),
                             njobs=njobs, **kwargs)
    assert isinstance(dataset_id, str) and dataset_id, dataset_id
    return dataset_id


def offer(cpu: int = 1, gpu: int = 0, memory: float = 8.0, disk: float = 100.0,
          time: float = 24.0, hostname: str = "testhost") -> dict[str, Any]:
    """The named params of new_task for a pilot offering these resources."""
    return {"gridspec": "", "hostname": hostname, "domain": "test", "ifaces": [],
            "os": None, "cpu": cpu, "gpu": gpu, "memory": memory, "disk": disk,
            "time": time}


def wait_until(what: str, fn: Callable[[], T | None], timeout: float = 30.0,
               interval: float = 0.1) -> T:
    """Poll ``fn`` until it returns something truthy; fail saying ``what`` did not happen.

    The last value seen is shown on failure, so a stuck state is visible.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; "
                                 f"last seen: {last!r}")
        time.sleep(interval)


def counts(client: IceProdClient, dataset_id: str) -> dict[str, int]:
    """public_get_number_of_tasks_in_each_state, with zero counts dropped."""
    got = client.call("public_get_number_of_tasks_in_each_state", dataset_id=dataset_id)
    assert isinstance(got, dict), got
    return {k: v for k, v in got.items() if v}


def wait_counts(client: IceProdClient, dataset_id: str, expected: dict[str, int],
                timeout: float = 30.0) -> dict[str, int]:
    """Wait until the dataset's task counts by state are exactly ``expected``."""
    seen: dict[str, Any] = {}

    def check() -> bool:
        seen["counts"] = counts(client, dataset_id)
        return seen["counts"] == expected

    try:
        wait_until(f"task counts {expected}", check, timeout)
    except AssertionError as e:
        raise AssertionError(f"{e} (counts were {seen.get('counts')})") from None
    return seen["counts"]


def claim(client: IceProdClient, timeout: float = 30.0, **resources: Any) -> list[dict[str, Any]]:
    """new_task until it hands out something (the scheduler may still be queueing)."""
    got: list[dict[str, Any]] = wait_until("new_task to hand out a task",
                                           lambda: client.call("new_task", **offer(**resources)),
                                           timeout)
    return got


def claim_one(client: IceProdClient, timeout: float = 30.0,
              **resources: Any) -> dict[str, Any]:
    tasks = claim(client, timeout, **resources)
    assert len(tasks) == 1, f"asked for one cpu, got {len(tasks)} tasks"
    return tasks[0]


def task_options(description: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = description["options"]
    return options


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
