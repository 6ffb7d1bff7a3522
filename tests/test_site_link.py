"""A client site's link where it used to get stuck or lose an outcome, with real processes:
a master and one client site, both on SQLite or both on MariaDB (``db_url``), the client
joined with ``add-site`` and ``join``, and a pilot at the client speaking JSON-RPC with a
pilot key issued there.

- a backlog larger than one call (300 logs of 512 KB queued while the master was away),
  and a master whose body limit is smaller than the site's calls: everything arrives;
- a client whose clock is an hour behind, restarted between the hand-out and the finish,
  also with a database that kept no clock floor: the outcome reaches the master;
- a client whose clock is an hour ahead: its outcome is refused for now, kept, and taken
  once its clock is right;
- ``serve --processes 3`` at the client: one link pulls, every process shows it.

A wrong clock is the server's ``debug_clock_offset`` option, which shifts the wall time its
versions come from and nothing else (docs/federation.md).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete

from iceprod_server.client import IceProdClient, RPCError
from iceprod_server.db.models import Meta
from tests.support.databases import backend_of, connect, scalar, throwaway_database
from tests.support.datasets import claim_one, counts, submit, task_options, wait_until
from tests.support.federation import Site, make_site, quick_config, start_site, stop_site
from tests.support.http import fetch
from tests.support.servers import Deployment, ServerProcess, start_server

HOUR = "3600"
LOG_BYTES = 512 * 1024


@dataclass
class Pair:
    master: ServerProcess
    user: IceProdClient
    admin: IceProdClient
    site: Site
    client_url: str
    tmp: Path
    env: dict[str, str]

    def status(self) -> dict[str, Any]:
        [status] = self.admin.call("site_status")
        return status

    def restart_master(self) -> None:
        self.master = start_server(self.master.deployment, self.tmp / "logs", self.env,
                                   port=self.master.port)

    def local(self) -> IceProdClient:
        assert self.site.server is not None
        return self.site.server.client()

    def pilot(self) -> IceProdClient:
        assert self.site.server is not None
        return self.site.server.client(self.site.deployment.passkey("pilot"),
                                       pilot_ref="pilot-1")

    def outbox(self) -> int:
        return int(scalar(self.client_url, "SELECT COUNT(*) FROM outbox"))


MakePair = Callable[..., Pair]


@pytest.fixture
def pair(db_url: str, tmp_path: Path) -> Iterator[MakePair]:
    """``pair(master_env)``: a master on ``db_url`` and a client site joined to it, on a
    database of the same kind; the site is not started."""
    made: list[Pair] = []
    with throwaway_database(backend_of(db_url), tmp_path / "client-db") as client_url:

        def make(master_env: dict[str, str] | None = None) -> Pair:
            env = master_env or {}
            deployment = Deployment.init(tmp_path / "master", db_url)
            master = start_server(deployment, tmp_path / "logs", env)
            site = make_site(master, "site-a", tmp_path / "site-a", client_url)
            made.append(Pair(master, master.client(deployment.passkey("user")),
                             master.client(deployment.passkey("admin")), site, client_url,
                             tmp_path, env))
            return made[-1]

        try:
            yield make
        finally:
            for p in made:
                stop_site(p.site)
                p.master.stop()


def local_counts(client: IceProdClient, dataset_id: str) -> dict[str, int]:
    """Task counts at the client; none before it pulled the dataset (-32003 until then)."""
    try:
        return counts(client, dataset_id)
    except RPCError as e:
        if e.code != -32003:
            raise
        return {}


def log_text(task_id: str, name: str, size: int = LOG_BYTES, line: str = "") -> str:
    """``size`` bytes of text naming the task and the log (``line`` may add characters
    of several bytes, then the size is about)."""
    unit = f"{task_id} {name} {line}{'x' * 40}\n"
    text = unit * (size // len(unit.encode()) + 1)
    while len(text.encode()) > size:
        text = text[:len(text) - max(1, (len(text.encode()) - size) // 4)]
    return text


def finish_one(pilot: IceProdClient, logs: Callable[[str], dict[str, str]] | None = None
               ) -> tuple[str, dict[str, str]]:
    """Claim one task at the client, upload its ``logs`` (made from its id) and finish it;
    its id and the logs."""
    options = task_options(claim_one(pilot))
    task_id = str(options["task_id"])
    made = logs(task_id) if logs else {}
    for name, text in made.items():
        pilot.call("upload_logfile", task=task_id, name=name, data=text)
    pilot.call("finish_task", task_id=task_id, attempt=options["attempt"],
               stats={"time_used": 1.0})
    return task_id, made


def check_logs(master: ServerProcess, expected: dict[tuple[str, str], str]) -> None:
    """Every log is at the master, byte for byte."""
    for (task_id, name), text in expected.items():
        stored = fetch(master.port, "GET", f"/log/{task_id}/{name}")
        assert stored.status == 200, (task_id, name, stored.status)
        assert stored.body == text.encode(), (task_id, name, len(stored.body))


def test_a_backlog_larger_than_one_call_drains_after_an_outage(pair: MakePair) -> None:
    p = pair()
    njobs = 30
    dataset_id = submit(p.user, quick_config("work"), njobs=njobs)
    start_site(p.site, p.tmp / "logs", {"ICEPROD_SITE_THRESHOLD": str(njobs),
                                        "ICEPROD_SITE_PULL": str(njobs)})
    local = p.local()
    wait_until("the client to hold every task",
               lambda: local_counts(local, dataset_id).get("queued", 0) == njobs)
    p.master.stop()
    # while the master is away, the client's pilot finishes every task with ten logs of
    # 512 KB each: 300 logs, 150 MB, more than the master takes in one call (64 MB)
    pilot = p.pilot()
    expected: dict[tuple[str, str], str] = {}
    for _ in range(njobs):
        task_id, logs = finish_one(pilot, lambda t: {f"log{i}": log_text(t, f"log{i}")
                                                     for i in range(10)})
        expected.update({(task_id, name): text for name, text in logs.items()})
    assert len(expected) == 300 and {len(t.encode()) for t in expected.values()} == {
        LOG_BYTES}
    assert counts(local, dataset_id) == {"complete": njobs}
    assert p.outbox() >= 300 + 2 * njobs  # the logs, the stats and the tasks
    p.restart_master()
    master = p.master.client()
    wait_until("every task complete at the master",
               lambda: counts(master, dataset_id) == {"complete": njobs}, timeout=300,
               interval=1.0)
    wait_until("the outbox to drain", lambda: p.outbox() == 0, timeout=300, interval=1.0)
    check_logs(p.master, expected)
    assert p.status()["refused"] == 0


def test_logs_larger_than_the_masters_body_limit_arrive_in_pieces(pair: MakePair) -> None:
    # the master takes at most 1 MiB a call; the site starts with 4 MiB calls
    p = pair({"ICEPROD_MAX_BODY_BYTES": str(1024 * 1024)})
    dataset_id = submit(p.user, quick_config("work"), njobs=2)
    start_site(p.site, p.tmp / "logs")
    local = p.local()
    wait_until("the client to hold the tasks",
               lambda: local_counts(local, dataset_id).get("queued", 0) == 2)
    pilot = p.pilot()
    expected: dict[tuple[str, str], str] = {}
    for _ in range(2):
        # 3 MB with characters of two, three and four bytes, and a small log
        task_id, logs = finish_one(pilot, lambda t: {
            "stdout": log_text(t, "stdout", 3_000_000, "\u00e9t\u00e9 \u2713 \U0001f600 "),
            "stderr": "small\n"})
        expected.update({(task_id, name): text for name, text in logs.items()})
    master = p.master.client()
    wait_until("both tasks complete at the master",
               lambda: counts(master, dataset_id) == {"complete": 2}, timeout=120)
    wait_until("the outbox to drain", lambda: p.outbox() == 0, timeout=120)
    check_logs(p.master, expected)
    assert p.status()["refused"] == 0
    assert p.site.server is not None
    assert "calls carry at most 1048576 bytes from now on" in p.site.server.log_text()


def test_a_client_an_hour_behind_restarted_between_hand_out_and_finish(
        pair: MakePair) -> None:
    p = pair()
    dataset_id = submit(p.user, quick_config("work"), njobs=2)
    behind = {"ICEPROD_DEBUG_CLOCK_OFFSET": "-" + HOUR, "ICEPROD_SITE_THRESHOLD": "2",
              "ICEPROD_SITE_PULL": "2"}
    start_site(p.site, p.tmp / "logs", behind)
    wait_until("the client to hold both tasks",
               lambda: local_counts(p.local(), dataset_id).get("queued", 0) == 2)
    # the master stamped the hand-out with its own time, an hour after the client's
    stop_site(p.site)
    start_site(p.site, p.tmp / "logs", behind)
    first, _ = finish_one(p.pilot())
    master = p.master.client()
    wait_until("the first task complete at the master", lambda: master.call(
        "public_get_task", task_id=first)["status"] == "complete")

    # a client database that kept no floor of its clock (as before this version): its
    # outcome is stamped below the hand-out; the master answers "stale" with the version
    # the task has, and the client stamps it again above that instead of dropping it
    stop_site(p.site)
    with connect(p.client_url) as conn:
        floor = conn.execute(delete(Meta).where(Meta.key == "site_clock"))
        conn.commit()
    assert floor.rowcount == 1, "the clock's floor is kept in the database"
    start_site(p.site, p.tmp / "logs", behind)
    second, _ = finish_one(p.pilot())
    wait_until("the second task complete at the master", lambda: master.call(
        "public_get_task", task_id=second)["status"] == "complete")
    assert counts(master, dataset_id) == {"complete": 2}
    wait_until("the outbox to drain", lambda: p.outbox() == 0)
    assert p.status()["refused"] == 0


def test_a_client_an_hour_ahead_keeps_its_outcome_until_its_clock_is_right(
        pair: MakePair) -> None:
    p = pair()
    dataset_id = submit(p.user, quick_config("work"), njobs=1)
    start_site(p.site, p.tmp / "logs", {"ICEPROD_DEBUG_CLOCK_OFFSET": HOUR})
    wait_until("the client to hold the task",
               lambda: local_counts(p.local(), dataset_id).get("queued", 0) == 1)
    task_id, _ = finish_one(p.pilot())
    # refused for now, with the reason, at the master; kept at the client, which says why
    refusal = wait_until("the master to refuse the version as too far ahead", lambda: next(
        (r for r in p.status()["recent_refusals"] if "ahead" in r["reason"]), None))
    assert "at most 300 s" in refusal["reason"], refusal
    master = p.master.client()
    assert master.call("public_get_task", task_id=task_id)["status"] == "processing"
    assert p.outbox() > 0
    server = p.site.server
    assert server is not None
    wait_until("the client's overview to say why", lambda: "ahead of the master" in fetch(
        server.port, "GET", "/").body.decode())
    # its clock set right, the client stamps the outcome again and the master takes it
    stop_site(p.site)
    start_site(p.site, p.tmp / "logs")
    wait_until("the task complete at the master", lambda: master.call(
        "public_get_task", task_id=task_id)["status"] == "complete")
    wait_until("the outbox to drain", lambda: p.outbox() == 0)
    task = master.call("public_get_task", task_id=task_id)
    assert [a["error"] for a in task["attempts"]] == [False]


def test_a_client_with_three_processes_runs_one_link(pair: MakePair) -> None:
    p = pair()
    threshold = pull = 5
    dataset_id = submit(p.user, quick_config("work"), njobs=60)
    start_site(p.site, p.tmp / "logs", {"ICEPROD_SITE_THRESHOLD": str(threshold),
                                        "ICEPROD_SITE_PULL": str(pull)},
               extra_args=("--processes", "3"))
    local = p.local()
    wait_until("the client to pull work", lambda: local_counts(local, dataset_id))
    pilot = p.pilot()
    # one puller keeps at most threshold - 1 + pull tasks waiting (and one runs here);
    # three would each pull when the queue runs low
    most = 0
    for _ in range(20):
        finish_one(pilot)
        for _ in range(5):
            unfinished = sum(n for s, n in local_counts(local, dataset_id).items()
                             if s != "complete")
            most = max(most, unfinished)
            time.sleep(0.1)
    assert most <= threshold - 1 + pull + 1, most
    # every process shows the one link: what it pulled is what the master handed out
    master = p.master.client()

    def handed() -> int:
        return sum(n for s, n in counts(master, dataset_id).items()
                   if s in ("processing", "complete"))

    def pulled_on_pages() -> set[int]:
        assert p.site.server is not None
        return {int(m.group(1).replace(",", "")) for _ in range(12) if (m := re.search(
            r"pulled ([\d,]+)", fetch(p.site.server.port, "GET", "/").body.decode()))}

    wait_until("every process to show the link's pulls",
               lambda: pulled_on_pages() == {handed()}, timeout=30, interval=0.5)
