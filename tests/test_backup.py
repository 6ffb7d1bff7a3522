"""``iceprod-server backup`` of a 200 MB database while pilots finish tasks, then
``restore`` into a data directory made by ``init``: the backup finishes, and every finish
acknowledged before it began is in it."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support.databases import backend_of, scalar, throwaway_database
from tests.support.datasets import config, offer, submit, wait_counts, wait_until
from tests.support.servers import CommandFailed, Deployment, iceprod_server

# more tasks than the pilots can finish while the backup runs: they never run out of work
NJOBS = 20000
PILOTS = 4
# the database grows to this size from the logs of an earlier dataset, uploaded by pilots
# as they would be: three logs per task, each kept in the database (a server that keeps
# logs of up to 1 MiB inline)
DATABASE_BYTES = 200 * 1024 * 1024
LOG_INLINE_MAX = 1024 * 1024
LOG_BYTES = 1000 * 1024
LOGS_PER_TASK = 3
HISTORY_JOBS = -(-DATABASE_BYTES // (LOG_BYTES * LOGS_PER_TASK))
UPLOADERS = 8
# a backup of 200 MB takes seconds; one that restarts whenever a pilot's finish is
# committed never ends
BACKUP_TIMEOUT = 90.0


def log_text(task_id: str, name: str) -> str:
    """A pilot's log of LOG_BYTES: numbered lines, different for every task and log."""
    line = f"{task_id} {name}: event processed, energy 1.25e+03 GeV, 17 hits;\n"
    count = LOG_BYTES // len(line) + 1
    return "".join(f"{i:08d} {line}" for i in range(count))[:LOG_BYTES]


def fill_with_history(srv: Any, user: Any, key: str) -> str:
    """An earlier dataset worked through by pilots that upload their logs: the database
    then holds DATABASE_BYTES of them."""
    dataset_id = submit(user, config(description="history"), njobs=HISTORY_JOBS)

    def pilot(n: int) -> None:
        client = srv.client(key, pilot_ref=f"history{n}")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            tasks = client.call("new_task", **offer(cpu=1))
            if not tasks:
                if completed(srv, dataset_id) == HISTORY_JOBS:
                    return
                time.sleep(0.05)
            for desc in tasks:
                opts = desc["options"]
                for name in ("stdout", "stderr", "stdlog")[:LOGS_PER_TASK]:
                    client.call("upload_logfile", task=opts["task_id"], name=name,
                                data=log_text(opts["task_id"], name))
                client.call("finish_task", task_id=opts["task_id"], attempt=opts["attempt"],
                            stats={"time_used": 1.0})

    with ThreadPoolExecutor(UPLOADERS) as pool:
        list(pool.map(pilot, range(UPLOADERS)))
    wait_counts(srv.client(), dataset_id, {"complete": HISTORY_JOBS}, timeout=60)
    return dataset_id


def completed(srv: Any, dataset_id: str) -> int:
    got = srv.client().call("public_get_number_of_tasks_in_each_state", dataset_id=dataset_id)
    return int(got.get("complete", 0))


class Load:
    """Pilot threads that claim and finish tasks, remembering each acknowledged finish."""

    def __init__(self, url: str, key: str) -> None:
        from iceprod_server.client import IceProdClient

        self.clients = [IceProdClient(url, passkey=key, pilot_ref=f"p{i}")
                        for i in range(PILOTS)]
        self.acked: list[str] = []
        self.errors: list[BaseException] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.pilot, args=(c,)) for c in self.clients]

    def pilot(self, client: Any) -> None:
        try:
            while not self.stop.is_set():
                tasks = client.call("new_task", **offer(cpu=1))
                if not tasks:
                    time.sleep(0.05)
                for desc in tasks:
                    opts = desc["options"]
                    client.call("stillrunning", task_id=opts["task_id"],
                                attempt=opts["attempt"])
                    client.call("finish_task", task_id=opts["task_id"],
                                attempt=opts["attempt"], stats={"time_used": 0.1})
                    with self.lock:
                        self.acked.append(opts["task_id"])
        except BaseException as e:  # shown by the test
            with self.lock:
                self.errors.append(e)

    def snapshot(self) -> set[str]:
        with self.lock:
            return set(self.acked)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


LOG_SUM = "SELECT SUM(size) FROM task_logs WHERE data IS NOT NULL"


def test_backup_of_a_large_database_under_load_restores_every_acknowledged_finish(
        server: Any, db_url: str, tmp_path: Path) -> None:
    srv = server(db_url, env={"ICEPROD_LOG_INLINE_MAX": str(LOG_INLINE_MAX)})
    user = srv.client(srv.deployment.passkey("user", "alice"))
    key = srv.deployment.passkey("pilot")
    started = time.monotonic()
    fill_with_history(srv, user, key)
    logs = int(scalar(db_url, LOG_SUM))
    assert logs >= DATABASE_BYTES, logs
    filled = time.monotonic() - started
    dataset_id = submit(user, config(), njobs=NJOBS)
    out = tmp_path / "backup" / "iceprod.bak"

    with Load(srv.url, key) as load:
        wait_until("50 finishes", lambda: len(load.snapshot()) >= 50 or load.errors)
        before = load.snapshot()
        began = time.monotonic()
        result = srv.deployment.cli("backup", "--out", str(out),
                                    timeout=BACKUP_TIMEOUT).stdout
        took = time.monotonic() - began
        after = load.snapshot()
    assert not load.errors, load.errors
    print(f"\n  filled in {filled:.1f} s; the backup command took {took:.1f} s with "
          f"{len(after) - len(before)} finishes meanwhile: {result.strip()}")
    assert out.is_file() and f"wrote {out}" in result, result
    assert len(after) > len(before), "the pilots should have kept working during the backup"

    with throwaway_database(backend_of(db_url), tmp_path / "restored-db") as url:
        target = Deployment.init(tmp_path / "restored", url)
        began = time.monotonic()
        restored = target.cli("restore", "--from", str(out)).stdout
        print(f"  restored in {time.monotonic() - began:.1f} s")
        assert "restored" in restored, restored
        srv2 = server(url, deployment=target)
        reader = srv2.client()
        got = reader.call("public_get_number_of_tasks_in_each_state", dataset_id=dataset_id)
        assert got.get("complete", 0) >= len(before), got
        for task_id in sorted(before):
            task = reader.call("public_get_task", task_id=task_id)
            assert task["status"] == "complete", (task_id, task["status"])
        # and the logs that made the database large came back whole
        assert int(scalar(url, LOG_SUM)) == logs


def test_restore_refuses_what_it_cannot_take(tmp_path: Path, sqlite_url: str) -> None:
    dep = Deployment.init(tmp_path / "data", sqlite_url)
    not_a_backup = tmp_path / "notes.txt"
    not_a_backup.write_text("hello\n")
    with pytest.raises(CommandFailed, match="not a SQLite backup"):
        dep.cli("restore", "--from", str(not_a_backup))
    with pytest.raises(CommandFailed, match="no backup file"):
        dep.cli("restore", "--from", str(tmp_path / "missing.db"))
    # the data directory still works: a backup of it can be taken and restored
    out = tmp_path / "b.db"
    dep.cli("backup", "--out", str(out))
    assert "restored" in dep.cli("restore", "--from", str(out)).stdout


def test_version_flag() -> None:
    from iceprod_server import __version__

    assert iceprod_server("--version").stdout.strip() == f"iceprod-server {__version__}"
