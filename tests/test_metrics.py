"""``GET /metrics``: the Prometheus text format, parsed with prometheus_client's own parser;
its counters match what the test did, with one process and with ``--processes 2``; only
admins and the ``metrics_allow`` addresses may read it."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.support.datasets import claim, config, submit, wait_counts
from tests.support.http import fetch
from tests.support.servers import ServerProcess, start_server


def scrape(srv: ServerProcess, key: str | None = None) -> dict[tuple[str, tuple[Any, ...]], float]:
    reply = fetch(srv.port, "GET", "/metrics", key=key)
    assert reply.status == 200, reply.body[:500]
    assert reply.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for s in family.samples:
            samples[s.name, tuple(sorted(s.labels.items()))] = s.value
    return samples


def value(samples: dict[tuple[str, tuple[Any, ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def rpc_posts(samples: dict[tuple[str, tuple[Any, ...]], float]) -> float:
    return sum(v for (name, labels), v in samples.items()
               if name == "iceprod_http_requests_total"
               and ("handler", "JSONRPCHandler") in labels)


def test_counters_match_what_was_done(server: Any, db_url: str) -> None:
    srv = server(db_url)
    user = srv.client(srv.deployment.passkey("user", "alice"))
    pilot = srv.client(srv.deployment.passkey("pilot"), pilot_ref="p")
    before = scrape(srv)
    for i in range(3):
        assert srv.client().call("echo", value=i) == i
    dataset_id = submit(user, config(), njobs=4)
    finished = 0
    while finished < 4:
        for desc in claim(pilot, cpu=4):
            opts = desc["options"]
            pilot.call("finish_task", task_id=opts["task_id"], attempt=opts["attempt"],
                       stats={"time_used": 0.1})
            finished += 1
    wait_counts(srv.client(), dataset_id, {"complete": 4})
    after = scrape(srv)

    assert value(after, "iceprod_tasks", status="complete") == 4
    assert value(after, "iceprod_tasks", status="processing") == 0
    # every POST /jsonrpc of this test, and nothing else, went to the JSON-RPC handler
    assert rpc_posts(after) - rpc_posts(before) >= 3 + 1 + 4
    assert value(after, "iceprod_scheduler_last_pass_timestamp_seconds") > 0
    assert value(after, "iceprod_executor_queue_depth", pool="db") >= 0
    assert ("iceprod_http_request_duration_seconds_count",
            (("handler", "JSONRPCHandler"),)) in after


def test_only_admins_and_allowed_addresses(server: Any, sqlite_url: str) -> None:
    srv = server(sqlite_url, env={"ICEPROD_METRICS_ALLOW": "192.0.2.0/24"})
    anonymous = fetch(srv.port, "GET", "/metrics")
    assert anonymous.status == 401 and "Bearer" in anonymous.headers["WWW-Authenticate"]
    assert fetch(srv.port, "GET", "/metrics", key=srv.deployment.passkey("pilot")).status == 403
    assert fetch(srv.port, "GET", "/metrics", key="not-a-key").status == 401
    assert "iceprod_tasks" in fetch(srv.port, "GET", "/metrics",
                                    key=srv.deployment.passkey("admin")).body.decode()


def test_workers_add_up(server: Any, db_url: str, tmp_path: Path) -> None:
    dep = server.deployment(db_url)
    srv = start_server(dep, tmp_path / "logs", extra_args=("--processes", "2"))
    try:
        before = scrape(srv)
        n = 40  # each on a new connection, so both workers answer some
        for i in range(n):
            assert srv.client(retries=0).call("echo", value=i) == i
        after = scrape(srv)
        assert rpc_posts(after) - rpc_posts(before) == n
    finally:
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(60) == 0
