"""Every page fits 1280 px without horizontal scrolling, and loads without script errors.

The pages are filled with what makes layouts break: a long description with an unbroken
word, long task names, a log with a very long line, every task state column.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.helpers import (
    WIDTH,
    Settled,
    Shots,
    Site,
    dataset_config,
    login,
    python_task,
    scroll_width,
)
from tests.support.datasets import claim_one

LONG_WORD = "gsiftp://gridftp.icecube.wisc.edu/data/sim/IceCube/2023/generated/" + "x" * 120
DESCRIPTION = ("A description long enough to wrap over several lines of the dataset page, "
               * 4) + LONG_WORD
LOG = "".join(f"line {i}: {'y' * 30}\n" for i in range(60)) + "z" * 600 + "\n"


@pytest.fixture(scope="module")
def filled(site: Site) -> dict[str, str]:
    """A dataset with two long-named tasks, one finished with a log; the ids of its pages."""
    names = ["generate_photon_propagation_with_a_long_name",
             "process_detector_response_with_a_long_name"]
    cfg = dataset_config(*(python_task(n, "pass") for n in names), description=DESCRIPTION)
    cfg["tasks"][1]["depends"] = [names[0]]
    dataset_id = site.submit("alice", cfg, njobs=25, description=DESCRIPTION)
    pilot = site.srv.client(site.pilot_key, pilot_ref="layout")
    task_id = claim_one(pilot)["options"]["task_id"]
    pilot.call("upload_logfile", task=task_id, name="stdout", data=LOG)
    pilot.call("finish_task", task_id=task_id, stats={"hostname": "layout-node"})
    job_id = site.client().call("public_get_jobs", dataset_id=dataset_id)["items"][0]["job_id"]
    return {"dataset": dataset_id, "task": task_id, "job": job_id}


def test_no_horizontal_scrolling_at_1280_px(page: Any, site: Site, shot: Shots,
                                            filled: dict[str, str]) -> None:
    d, t, j = filled["dataset"], filled["task"], filled["job"]
    pages = ["/", "/dataset", f"/dataset/{d}", f"/dataset/{d}/jobs", f"/dataset/{d}/tasks",
             f"/job/{j}", f"/task/{t}", f"/log/{t}/stdout", "/submit", "/admin", "/rpc"]
    too_wide: list[str] = []
    broken: list[str] = []
    login(page, "admin1")
    settled = Settled(page)
    for path in pages + ["/logout", "/login"]:
        response = page.goto(path)
        if path == "/logout":
            continue
        settled.wait()  # the page's script has filled in what it fetches
        status = response.status if response else None
        if status != 200:
            broken.append(f"{path}: HTTP {status}")
        width = scroll_width(page)
        shot(page, path.strip("/").replace("/", "-") or "overview")
        if width > WIDTH:
            too_wide.append(f"{path}: {width} px")
    errors = [p for p in page.problems if p.startswith("page error")]
    assert not broken, f"pages that did not load: {broken}"
    assert not too_wide, f"pages wider than {WIDTH} px (horizontal scrolling): {too_wide}"
    assert not errors, f"script errors on the pages: {errors}"
