"""Prometheus metrics of a server process (``GET /metrics``).

With ``serve --processes N`` every worker writes its values to files in the directory named
by ``PROMETHEUS_MULTIPROC_DIR`` (set by the supervisor before any worker starts) and a
scrape, answered by whichever worker gets it, adds up all of them. Counters and histograms
are summed; gauges say how they combine (``livesum``: the sum over living workers;
``mostrecent``: the last value written by any of them).

Gauges that describe a moment (pool queues, busy threads, live viewers) are sampled every
:data:`SAMPLE_SECONDS` by each worker; task counts come from the database's counters when a
scrape asks for them (one cheap read).
"""

from __future__ import annotations

import http
import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

from iceprod_server.states import TASK_STATES

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
SAMPLE_SECONDS = 1.0
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)

HTTP_REQUESTS = Counter("iceprod_http_requests", "HTTP requests answered",
                        ["handler", "method", "status"])
HTTP_SECONDS = Histogram("iceprod_http_request_duration_seconds",
                         "time from a request's head to its last byte", ["handler"],
                         buckets=LATENCY_BUCKETS)
RPC_CALLS = Counter("iceprod_rpc_calls", "JSON-RPC calls by method and outcome (ok, or the "
                    "error code)", ["rpc_method", "outcome"])
RPC_SECONDS = Histogram("iceprod_rpc_call_duration_seconds", "time of one JSON-RPC call",
                        ["rpc_method"], buckets=LATENCY_BUCKETS)
EXECUTOR_QUEUE = Gauge("iceprod_executor_queue_depth", "units of work waiting for a thread",
                       ["pool"], multiprocess_mode="livesum")
EXECUTOR_BUSY = Gauge("iceprod_executor_busy_threads", "threads running a unit of work",
                      ["pool"], multiprocess_mode="livesum")
DB_UNIT_SECONDS = Histogram("iceprod_db_unit_duration_seconds",
                            "time of one unit of database work, retries included", ["kind"],
                            buckets=LATENCY_BUCKETS)
DB_RETRIES = Counter("iceprod_db_retries", "units of database work run again after a lock "
                     "conflict")
DB_UNAVAILABLE = Counter("iceprod_db_unavailable", "units of database work that ended in "
                         "-32005 (database down, busy or too slow; nothing committed)")
DB_OUTCOME_UNKNOWN = Counter("iceprod_db_outcome_unknown", "units of database work that "
                             "ended in -32006 (committing when the time ran out, or the "
                             "connection lost during COMMIT)")
TASKS = Gauge("iceprod_tasks", "tasks by status, from the database's counters", ["status"],
              multiprocess_mode="mostrecent")
CLAIMS = Counter("iceprod_task_claims", "tasks handed to pilots by new_task")
COMPLETIONS = Counter("iceprod_task_completions", "tasks reported complete by finish_task")
FAILURES = Counter("iceprod_task_errors", "tasks reported failed by task_error")
SCHEDULER_PASS_SECONDS = Histogram("iceprod_scheduler_pass_duration_seconds",
                                   "time of one scheduler pass",
                                   buckets=LATENCY_BUCKETS)
SCHEDULER_LAST_PASS = Gauge("iceprod_scheduler_last_pass_timestamp_seconds",
                            "when a scheduler pass last ended (Unix time)",
                            multiprocess_mode="max")
PROXY_CACHE_HITS = Counter("iceprod_proxy_cache_hits", "proxy fills served from the cache")
PROXY_CACHE_MISSES = Counter("iceprod_proxy_cache_misses", "proxy fills fetched from the "
                             "source to be cached")
PROXY_BYTES = Counter("iceprod_proxy_bytes", "bytes the proxy sent to its callers")
LIVE_VIEWERS = Gauge("iceprod_live_viewers", "open live-update streams of the pages",
                     multiprocess_mode="livesum")


def rpc_outcome(code: int | None) -> str:
    return "ok" if code is None else str(code)


# Label values that come from a request are taken only from these sets; anything else is
# counted as OTHER. Each distinct value is a series kept for the life of the process (and
# a file per worker in multiprocess mode), so a client that could choose them could grow
# the server's memory and every scrape without bound.
OTHER = "other"
HTTP_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"))
HTTP_STATUSES = frozenset(int(s) for s in http.HTTPStatus)


def http_labels(method: str, status: int) -> tuple[str, str]:
    """The ``method`` and ``status`` labels of a request: its own when they are among the
    standard ones, else ``other``."""
    return (method if method in HTTP_METHODS else OTHER,
            str(status) if status in HTTP_STATUSES else OTHER)


# the labelled series already looked up: labels() validates and locks on every call
_rpc_series: dict[tuple[str, int], tuple[Any, Any]] = {}
_http_series: dict[tuple[str, str, str], tuple[Any, Any]] = {}


def observe_rpc(rpc_method: str, code: int, seconds: float) -> None:
    """One JSON-RPC call of a registered method (or "(unknown)"); code 0 is success."""
    series = _rpc_series.get((rpc_method, code))
    if series is None:
        series = _rpc_series[(rpc_method, code)] = (
            RPC_CALLS.labels(rpc_method=rpc_method, outcome=rpc_outcome(code or None)),
            RPC_SECONDS.labels(rpc_method=rpc_method))
    series[0].inc()
    series[1].observe(seconds)


def observe_http(handler: str, method: str, status: int, seconds: float) -> None:
    """One answered HTTP request. ``handler`` is the name of the code that answered (a
    fixed set); the method and status the client sent or caused are folded by
    :func:`http_labels`, before the lookup too, so the lookup table stays as small."""
    method_label, status_label = http_labels(method, status)
    key = (handler, method_label, status_label)
    series = _http_series.get(key)
    if series is None:
        series = _http_series[key] = (
            HTTP_REQUESTS.labels(handler=handler, method=method_label, status=status_label),
            HTTP_SECONDS.labels(handler=handler))
    series[0].inc()
    series[1].observe(seconds)


def set_task_counts(counts: dict[str, int]) -> None:
    for status in (*TASK_STATES, *counts):
        TASKS.labels(status=status).set(counts.get(status, 0))


def exposition() -> tuple[bytes, str]:
    """The metrics of this process, or of every worker in multiprocess mode."""
    if MULTIPROCESS:
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


def worker_gone(pid: int) -> None:
    """Drop the ``live`` gauges of a worker that ended (called by the supervisor)."""
    if MULTIPROCESS:
        _multiprocess.mark_process_dead(pid)
