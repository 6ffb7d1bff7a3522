"""``GET /metrics``: the Prometheus text format, parsed with prometheus_client's own parser;
its counters match what the test did, with one process and with ``--processes 2`` (each
worker made to answer half of the calls); only admins and the ``metrics_allow`` addresses
may read it, and the server warns at start-up when nginx in front would let every client
in."""

from __future__ import annotations

import http.client
import json
import re
import signal
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from iceprod_server.client import RPCError
from tests.support import jsonrpc
from tests.support.datasets import claim, config, submit, wait_counts
from tests.support.http import fetch
from tests.support.servers import ServerProcess, start_server
from tests.support.workers import paused, wait_workers


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
    with pytest.raises(RPCError) as refused:
        srv.client().call("no_such_method_made_up_by_a_caller")
    assert refused.value.code == -32601
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
    for name, n in (("iceprod_task_claims_total", 4), ("iceprod_task_completions_total", 4)):
        assert value(after, name) - value(before, name) == n, name
    assert value(after, "iceprod_rpc_calls_total", rpc_method="echo", outcome="ok") - \
        value(before, "iceprod_rpc_calls_total", rpc_method="echo", outcome="ok") == 3
    assert value(after, "iceprod_db_unit_duration_seconds_count", kind="write") > 0
    # a made-up method name is counted, but never becomes a label of its own
    assert value(after, "iceprod_rpc_calls_total", rpc_method="(unknown)",
                 outcome="-32601") == 1
    assert not any("made_up" in str(labels) for _, labels in after)
    assert value(after, "iceprod_tasks", status="processing") == 0
    # every POST /jsonrpc of this test, and nothing else, went to the JSON-RPC handler
    assert rpc_posts(after) - rpc_posts(before) >= 3 + 1 + 4
    assert value(after, "iceprod_scheduler_last_pass_timestamp_seconds") > 0
    # value() reads a missing series as 0: the pools' gauges must be there to be read
    for pool in ("db", "fs", "gsiftp"):
        for gauge in ("iceprod_executor_queue_depth", "iceprod_executor_busy_threads"):
            assert (gauge, (("pool", pool),)) in after, (gauge, pool)
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


EXPOSED = "trusted_proxy is not set, while [files] nginx_upload_dir says nginx is in front"


def test_start_up_warns_when_nginx_in_front_would_let_every_client_in(
        server: Any, sqlite_url: str, tmp_path: Path) -> None:
    upload_dir = tmp_path / "nginx-upload"
    upload_dir.mkdir()
    behind_nginx = {"ICEPROD_FILES_NGINX_UPLOAD_DIR": str(upload_dir)}
    alone = server(sqlite_url)
    exposed = server.another(alone, env=behind_nginx)
    trusted = server.another(alone, env={**behind_nginx, "ICEPROD_TRUSTED_PROXY": "127.0.0.1"})
    narrow = server.another(alone, env={**behind_nginx, "ICEPROD_METRICS_ALLOW": "192.0.2.0/24"})
    warning = next((line for line in exposed.log_text().splitlines() if EXPOSED in line), "")
    assert "WARNING" in warning and "metrics_allow covers loopback (127.0.0.1, ::1)" in warning, \
        exposed.log_text()[-3000:]
    assert "Set trusted_proxy" in warning
    # nothing to warn about: no sign of a front end (and a scrape from this machine that
    # no front end passed on), a trusted proxy, no loopback allowed
    scrape(alone)
    for quiet in (alone, trusted, narrow):
        assert "may read /metrics" not in quiet.log_text(), quiet.log_text()[-3000:]


def test_workers_add_up(server: Any, db_url: str, tmp_path: Path) -> None:
    dep = server.deployment(db_url)
    srv = start_server(dep, tmp_path / "logs", extra_args=("--processes", "2"))
    try:
        pids = wait_workers(srv.proc.pid, 2)
        before = scrape(srv)
        each = 20
        # while one worker is paused the other takes every new connection: both answer
        # `each` calls, and a scrape (answered by either) must count all of them
        for pid in sorted(pids):
            with paused(pid):
                for j in range(each):
                    assert srv.client(retries=0, timeout=10).call("echo", value=j) == j
        after = scrape(srv)
        n = each * len(pids)
        assert rpc_posts(after) - rpc_posts(before) == n
        assert value(after, "iceprod_rpc_calls_total", rpc_method="echo", outcome="ok") - \
            value(before, "iceprod_rpc_calls_total", rpc_method="echo", outcome="ok") == n
    finally:
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(60) == 0


def _series(samples: dict[tuple[str, tuple[Any, ...]], float], name: str) -> set[Any]:
    return {labels for (sample, labels) in samples if sample == name}


def test_made_up_methods_and_names_make_no_series(server: Any, sqlite_url: str) -> None:
    """What a client writes in its request line or its JSON-RPC call is counted, but never
    becomes a label value of its own: 1,000 made-up HTTP methods (on made-up paths too) and
    200 made-up JSON-RPC method names, sent anonymously, add at most a few series."""
    srv = server(sqlite_url)
    fetch(srv.port, "GET", "/healthz")
    before = scrape(srv)
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    answered: dict[int, int] = {}
    try:
        for i in range(1000):
            conn.request(f"FOO{i}", "/" if i % 2 else f"/made/up/path{i}")
            resp = conn.getresponse()
            resp.read()
            answered[resp.status] = answered.get(resp.status, 0) + 1
            if resp.will_close:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    finally:
        conn.close()
    assert sum(answered.values()) == 1000 and all(s >= 400 for s in answered), answered
    calls = [{"jsonrpc": "2.0", "id": i, "method": f"made_up_{i}", "params": {}}
             for i in range(200)]
    answers = jsonrpc.post(srv.rpc_url, json.dumps(calls)).json()
    assert [a["error"]["code"] for a in answers] == [-32601] * 200
    after = scrape(srv)

    # a histogram's buckets, count and sum are one series here
    def series(samples: dict[tuple[str, tuple[Any, ...]], float]) -> set[Any]:
        return {(re.sub(r"_(bucket|count|sum|created)$", "", name),
                 tuple(kv for kv in labels if kv[0] != "le")) for name, labels in samples}

    added = series(after) - series(before)
    assert len(added) < 30, f"{len(added)} new series, e.g. {sorted(added)[:5]}"
    methods = {dict(labels).get("method") for labels in
               _series(after, "iceprod_http_requests_total")}
    assert not any(m and m.startswith("FOO") for m in methods), methods
    assert "other" in methods, methods
    # every made-up request is still counted, under "other"
    other = sum(v for (name, labels), v in after.items()
                if name == "iceprod_http_requests_total" and ("method", "other") in labels)
    assert other == 1000, other
    rpc_names = {dict(labels).get("rpc_method") for labels in
                 _series(after, "iceprod_rpc_calls_total")}
    assert not any(n and "made_up" in n for n in rpc_names), rpc_names
    assert value(after, "iceprod_rpc_calls_total", rpc_method="(unknown)",
                 outcome="-32601") == 200
