"""``GET /healthz``: 200 with the database and the scheduler's age while both work; 503
naming the scheduler when no pass has ended well for ``scheduler_stall_seconds``, and 200
again after the next pass, without a restart; on SQLite, 503 naming the writer while the
writer thread does not answer (the write lock held by another process, or the thread
stuck in a long unit), though reads still work. (503 for an unreachable database is in
tests/faults/test_database.py.)"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from tests.support.databases import SQLiteWriteLock, backend_of
from tests.support.datasets import config, submit, wait_until
from tests.support.inprocess import in_process_server
from tests.support.servers import Deployment, http_get


def health(port: int) -> tuple[int, dict[str, Any]]:
    status, body = http_get(port, "/healthz")
    return status, json.loads(body)


def test_health_names_the_database_and_the_scheduler(server: Any, db_url: str) -> None:
    srv = server(db_url)
    srv.wait_scheduler_passes(1)
    status, answer = health(srv.port)
    assert status == 200, answer
    assert answer["status"] == "ok" and answer["database"] == "ok"
    if backend_of(db_url) == "sqlite":
        assert answer["writer"] == "ok", answer
    # test servers pass every 0.5 s: the last good pass is recent
    assert 0 <= answer["scheduler_age_s"] < 30 and answer["scheduler_passes"] >= 1


def test_a_stalled_scheduler_is_a_503_until_it_passes_again(server: Any, sqlite_url: str) -> None:
    # passes only every 600 s unless woken: after its first pass it looks stalled at once
    srv = server(sqlite_url, env={"ICEPROD_SCHEDULER_INTERVAL": "600",
                                  "ICEPROD_SCHEDULER_STALL_SECONDS": "1"})
    status, answer = wait_until("healthz to call the scheduler stalled",
                                lambda: (h := health(srv.port))[0] == 503 and h, timeout=30)
    assert answer["status"] == "unavailable" and answer["scheduler"] == "stalled", answer
    assert answer["database"] == "ok" and answer["scheduler_age_s"] > 1
    passes = answer["scheduler_passes"]
    # a submission wakes the scheduler: its pass makes the server healthy again
    submit(srv.client(srv.deployment.passkey("user", "alice")), config())
    status, answer = wait_until("healthz 200 after the next pass",
                                lambda: (h := health(srv.port))[0] == 200 and h, timeout=30)
    assert answer["scheduler_passes"] > passes and "scheduler" not in answer


def test_a_writer_that_cannot_write_is_a_503(server: Any, sqlite_url: str) -> None:
    """Another process holds the SQLite file's write lock: every write waits, reads do
    not. The health check sees the writer, not only a read."""
    srv = server(sqlite_url)
    with SQLiteWriteLock(sqlite_url) as lock:
        started = time.monotonic()
        status, answer = health(srv.port)
        assert time.monotonic() - started < 2.0 + 1.5  # its bound, and a loaded machine's
        assert status == 503, answer
        assert answer["writer"] == "not answering" and answer["database"] == "ok", answer
        # reads are served meanwhile
        assert srv.client(retries=0).call("public_get_datasets_by_status") == {}
        lock.release()
        status, answer = wait_until("healthz 200 once the lock is gone",
                                    lambda: (h := health(srv.port))[0] == 200 and h,
                                    timeout=10)
        assert answer["writer"] == "ok", answer


def _hold_writer(s: Session, seconds: float) -> None:
    time.sleep(seconds)  # a unit that runs long: the writer thread is busy with it


def test_a_stuck_writer_thread_is_a_503(tmp_path: Path, sqlite_url: str) -> None:
    deployment = Deployment.init(tmp_path / "data", sqlite_url)
    with in_process_server(deployment.data_dir, {"db_timeout": 10.0},
                           scheduler=False) as srv:
        status, answer = health(srv.port)
        assert status == 200 and answer["writer"] == "ok", answer
        assert srv.services is not None
        # a unit of work that keeps the writer thread for 5 s, as a long one would
        held = asyncio.run_coroutine_threadsafe(
            srv.services.db.write(_hold_writer, 5.0), srv.loop)
        time.sleep(0.5)  # the writer thread has taken the unit
        status, answer = health(srv.port)
        assert status == 503 and answer["writer"] == "not answering", answer
        held.result(30)
        status, answer = wait_until("healthz 200 once the unit is done",
                                    lambda: (h := health(srv.port))[0] == 200 and h,
                                    timeout=10)
        assert answer["writer"] == "ok", answer
