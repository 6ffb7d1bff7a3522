"""Claims under contention: 50 pilots, 1,000 tasks, every task completed exactly once.

Two server processes share one database (MariaDB, and SQLite too) and the pilots are
spread over both; on SQLite one process alone is measured as well. The trigger-kept
counters must then equal a fresh count of the rows. Each pilot is a thread with its own client and
``pilot_ref`` (they share one pilot passkey, as pilots of one site do), looping
``new_task`` / ``finish_task`` until the dataset is complete. Every claim and every finish
is recorded, so a task handed to two pilots, finished twice or never, is caught.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from iceprod_server.client import RPCError
from tests.support import databases
from tests.support.datasets import config, counts, offer, submit, task
from tests.support.servers import ServerProcess

PILOTS = 50
NJOBS = 500  # two tasks per job: 1,000 tasks
TASKS = 2 * NJOBS
DEADLINE = 300.0
SERVER_ENV = {"ICEPROD_SCHEDULER_INTERVAL": "0.2", "ICEPROD_QUEUE_DEPTH": "2000"}


@dataclass
class Record:
    lock: threading.Lock = field(default_factory=threading.Lock)
    claims: list[tuple[str, int, str]] = field(default_factory=list)  # task, attempt, pilot
    finished: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def pilot_loop(server: ServerProcess, key: str, name: str, record: Record,
               stop: threading.Event) -> None:
    client = server.client(key, pilot_ref=name, timeout=60, retries=20)
    resources = offer(cpu=1, memory=1.0, disk=1.0, time=1.0, hostname=name)
    idle = 0.02
    try:
        while not stop.is_set():
            try:
                tasks = client.call("new_task", **resources)
            except RPCError as e:
                with record.lock:
                    record.errors.append(f"{name} new_task: {e}")
                return
            if not tasks:
                stop.wait(idle)
                idle = min(idle * 2, 0.3)
                continue
            idle = 0.02
            for desc in tasks:
                opts = desc["options"]
                with record.lock:
                    record.claims.append((opts["task_id"], opts["attempt"], name))
                try:
                    client.call("finish_task", task_id=opts["task_id"],
                                stats={"hostname": name, "time_used": 0.001},
                                attempt=opts["attempt"])
                except RPCError as e:
                    with record.lock:
                        record.errors.append(f"{name} finish_task {opts['task_id']}: {e}")
                    continue
                with record.lock:
                    record.finished.append(opts["task_id"])
    finally:
        client.close()


@pytest.mark.parametrize("backend, processes", [("mariadb", 2), ("sqlite", 1), ("sqlite", 2)],
                         ids=["mariadb-2-processes", "sqlite-1-process", "sqlite-2-processes"])
def test_every_task_completed_exactly_once(server: Any, tmp_path: Path, backend: str,
                                           processes: int) -> None:
    with databases.throwaway_database(backend, tmp_path / "db") as url:
        first = server(url, env=SERVER_ENV)
        servers = [first] + [server.another(first, env=SERVER_ENV)
                             for _ in range(processes - 1)]
        dep = first.deployment
        pilot_key = dep.passkey("pilot")
        owner = first.client(dep.passkey("user", "alice"))
        dataset_id = submit(owner, config(task("first"), task("second", depends=["first"])),
                            njobs=NJOBS)

        record = Record()
        stop = threading.Event()
        threads = [threading.Thread(target=pilot_loop, daemon=True,
                                    args=(servers[i % len(servers)], pilot_key, f"pilot{i}",
                                          record, stop))
                   for i in range(PILOTS)]
        started = time.monotonic()
        for t in threads:
            t.start()
        watcher = first.client()
        seen: dict[str, int] = {}
        try:
            while time.monotonic() - started < DEADLINE:
                seen = counts(watcher, dataset_id)
                if seen == {"complete": TASKS} or record.errors:
                    break
                time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=90)
        elapsed = time.monotonic() - started

        assert not record.errors, f"{len(record.errors)} pilot calls failed:\n" + \
            "\n".join(record.errors[:20])
        assert seen == {"complete": TASKS}, \
            f"after {elapsed:.0f} s the task counts are {seen}, not all {TASKS} complete"

        # no task handed to two pilots, none finished twice, none lost
        claimed = Counter(task_id for task_id, _, _ in record.claims)
        twice = {t: n for t, n in claimed.items() if n > 1}
        assert not twice, f"tasks claimed more than once: {list(twice.items())[:10]}"
        finished = Counter(record.finished)
        assert all(n == 1 for n in finished.values()), finished.most_common(5)
        all_tasks = {r[0] for r in databases.query(
            url, "SELECT task_id FROM tasks WHERE dataset_id = :d", d=dataset_id)}
        assert len(all_tasks) == TASKS
        assert set(finished) == all_tasks == set(claimed)
        stat_rows = dict(databases.query(
            url, "SELECT task_id, COUNT(*) FROM task_stats WHERE dataset_id = :d "
                 "GROUP BY task_id", d=dataset_id))
        assert set(stat_rows) == all_tasks
        assert set(stat_rows.values()) == {1}, "a task has more than one task_stat row"
        # the counters the pages show, kept by the triggers while every claim and finish
        # ran at once, equal a fresh count of the rows
        kept = databases.query(url, "SELECT status, SUM(n) FROM task_counts WHERE "
                               "dataset_id = :d GROUP BY status", d=dataset_id)
        assert {k: int(v) for k, v in kept if int(v)} == {"complete": TASKS}
        hours = databases.query(url, "SELECT SUM(complete), SUM(failed) FROM "
                                "task_stat_hours WHERE dataset_id = :d", d=dataset_id)
        assert [(int(c), int(f)) for c, f in hours] == [(TASKS, 0)]
        # the work really was spread over the pilots (and over both processes)
        pilots_used = {pilot for _, _, pilot in record.claims}
        assert len(pilots_used) >= PILOTS // 2, f"only {len(pilots_used)} pilots got work"
        print(f"{TASKS} tasks on {backend} with {processes} processes: {elapsed:.1f} s, "
              f"{TASKS / elapsed:.0f} tasks/s")
