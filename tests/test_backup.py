"""``iceprod-server backup`` while pilots finish tasks, then ``restore`` into a data
directory made by ``init``: every finish acknowledged before the backup began is in it."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.databases import throwaway_database
from tests.support.datasets import config, offer, submit
from tests.support.servers import CommandFailed, Deployment, iceprod_server

NJOBS = 400
PILOTS = 4


class Load:
    """Pilot threads that claim and finish tasks, remembering each acknowledged finish."""

    def __init__(self, url: str, key: str) -> None:
        from iceprod_server.client import IceProdClient

        self.clients = [IceProdClient(url, passkey=key, pilot_ref=f"p{i}")
                        for i in range(PILOTS)]
        self.acked: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.pilot, args=(c,)) for c in self.clients]

    def pilot(self, client: Any) -> None:
        while not self.stop.is_set():
            tasks = client.call("new_task", **offer(cpu=1))
            if not tasks:
                time.sleep(0.05)
            for desc in tasks:
                opts = desc["options"]
                client.call("finish_task", task_id=opts["task_id"], attempt=opts["attempt"],
                            stats={"time_used": 0.1})
                with self.lock:
                    self.acked.append(opts["task_id"])

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


def test_backup_under_load_restores_every_acknowledged_finish(server: Any, db_url: str,
                                                             tmp_path: Path) -> None:
    srv = server(db_url)
    user = srv.client(srv.deployment.passkey("user", "alice"))
    dataset_id = submit(user, config(), njobs=NJOBS)
    out = tmp_path / "backup" / "iceprod.bak"

    with Load(srv.url, srv.deployment.passkey("pilot")) as load:
        while len(load.snapshot()) < 50:
            time.sleep(0.05)
        before = load.snapshot()
        result = srv.deployment.cli("backup", "--out", str(out)).stdout
        after = load.snapshot()
    assert out.is_file() and f"wrote {out}" in result, result
    assert len(after) > len(before), "the pilots should have kept working during the backup"

    kind = "sqlite" if db_url.startswith("sqlite") else "mariadb"
    with throwaway_database(kind, tmp_path / "restored-db") as url:
        target = Deployment.init(tmp_path / "restored", url)
        restored = target.cli("restore", "--from", str(out)).stdout
        assert "restored" in restored, restored
        srv2 = server(url, deployment=target)
        reader = srv2.client()
        got = reader.call("public_get_number_of_tasks_in_each_state", dataset_id=dataset_id)
        assert got.get("complete", 0) >= len(before), got
        for task_id in sorted(before):
            task = reader.call("public_get_task", task_id=task_id)
            assert task["status"] == "complete", (task_id, task["status"])


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
