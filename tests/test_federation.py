"""Site-to-site federation with real processes: a master on MariaDB, one client site on
SQLite and one on MariaDB, reference pilots at the clients.

The issue's scenarios use 500 tasks; these use a few dozen, because what is checked (each
task complete exactly once at the master, with its stat and its log) does not depend on
the count, and the suite runs on a 2-core machine. ``bench/federation.py`` runs larger
numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from iceprod_server.client import IceProdClient
from tests.support.databases import throwaway_database
from tests.support.datasets import counts, submit, wait_until
from tests.support.federation import (
    Site,
    make_site,
    quick_config,
    start_pilots,
    start_site,
    stop_site,
)
from tests.support.servers import Deployment, ServerProcess, start_server


@dataclass
class Federation:
    master: ServerProcess
    user: IceProdClient
    admin: IceProdClient
    sites: list[Site]
    tmp: Path


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    with (throwaway_database("mariadb", tmp_path / "db") as master_url,
          throwaway_database("sqlite", tmp_path / "db") as a_url,
          throwaway_database("mariadb", tmp_path / "db") as b_url):
        deployment = Deployment.init(tmp_path / "master", master_url)
        master = start_server(deployment, tmp_path / "logs",
                              {"ICEPROD_SITE_LEASE_SECONDS": "6"})
        sites = [make_site(master, "site-a", tmp_path / "site-a", a_url),
                 make_site(master, "site-b", tmp_path / "site-b", b_url)]
        fed = Federation(master, master.client(deployment.passkey("user")),
                         master.client(deployment.passkey("admin")), sites, tmp_path)
        try:
            yield fed
        finally:
            for site in sites:
                stop_site(site)
            master.stop()


def _status(fed: Federation) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in fed.admin.call("site_status")}


def test_two_sites_complete_a_dataset_exactly_once_with_logs(federation: Federation) -> None:
    fed = federation
    njobs = 20
    dataset_id = submit(fed.user, quick_config("generate", "process"), njobs=njobs)
    for site in fed.sites:
        start_site(site, fed.tmp / "logs")
        start_pilots(site, 2, fed.tmp / "pilots")
    master = fed.master.client()
    wait_until("every task complete at the master",
               lambda: counts(master, dataset_id) == {"complete": 2 * njobs}, timeout=120)
    tasks = master.call("public_get_tasks", dataset_id=dataset_id, limit=1000)["items"]
    assert len(tasks) == 2 * njobs
    # each task finished once: one successful attempt, and its stdout at the master
    for t in tasks:
        detail = wait_until(f"the stat and log of {t['task_id']}", lambda t=t: (
            d if (d := master.call("public_get_task", task_id=t["task_id"]))["logs"]
            and d["attempts"] else None))
        assert [a["error"] for a in detail["attempts"]] == [False], detail["attempts"]
        stdout = [log for log in detail["logs"] if log["name"] == "stdout"]
        assert stdout and f"done {t['name']}" in stdout[0]["tail"], detail["logs"]
    status = _status(fed)
    # both sites did work, and none of it was refused
    for site in fed.sites:
        assert status[site.name]["applied"] > 0, status
        assert status[site.name]["refused"] == 0, status
        assert status[site.name]["tasks_held"] == 0, status
