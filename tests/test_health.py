"""``GET /healthz``: 200 with the database and the scheduler's age while both work; 503
naming the scheduler when no pass has ended well for ``scheduler_stall_seconds``, and 200
again after the next pass, without a restart. (503 for an unreachable database is in
tests/faults/test_database.py.)"""

from __future__ import annotations

import json
from typing import Any

from tests.support.datasets import config, submit, wait_until
from tests.support.servers import http_get


def health(port: int) -> tuple[int, dict[str, Any]]:
    status, body = http_get(port, "/healthz")
    return status, json.loads(body)


def test_health_names_the_database_and_the_scheduler(server: Any, db_url: str) -> None:
    srv = server(db_url)
    srv.wait_scheduler_passes(1)
    status, answer = health(srv.port)
    assert status == 200, answer
    assert answer["status"] == "ok" and answer["database"] == "ok"
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
