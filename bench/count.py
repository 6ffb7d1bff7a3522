"""Benchmark 3: ``public_get_number_of_tasks_in_each_state`` on a dataset of 1,000,000 tasks.

The dataset (250,000 jobs of 4 tasks, statuses mixed as in a dataset well under way) is
bulk-loaded before the server starts. One client then calls ``echo``, the method, and a
GROUP BY over the dataset's rows in the tasks table, run directly on the database from this
process, in turn, one call at a time, so that all three see the same background noise; the
figures are p50/p99 of each and the ratios of the p50s. The GROUP BY is what counting the
rows themselves costs, for comparison with whatever the method does.

Only statuses the scheduler leaves alone are loaded (no ``idle``, ``reset`` or ``resume``)
and the server's queue depth is 1, so the counts do not change while they are measured.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from bench import report
from bench.backends import install
from bench.load import count_by_status, load_dataset, loader_engine
from bench.procs import BenchError, Cleanup, start_server
from bench.rpcload import Connection, RPCFailure, Timings, timed

METHOD = "public_get_number_of_tasks_in_each_state"
TASK_NAMES = ["generate", "propagate", "detector", "filter"]
# percent of tasks in each status
MIX = (("complete", 70), ("queued", 10), ("waiting", 5), ("processing", 5), ("failed", 6),
       ("suspended", 4))
_BY_PERCENT = [status for status, share in MIX for _ in range(share)]


def status_of(n: int) -> str:
    """A deterministic, well-spread status for task number ``n``."""
    return _BY_PERCENT[(n * 2654435761 >> 7) % 100]


@dataclass(frozen=True)
class Settings:
    tasks: int = 1_000_000
    calls: int = 50
    warmup: int = 3


QUICK = Settings(tasks=20_000, calls=10, warmup=1)


@dataclass
class _Measured:
    timings: Timings
    answer: Any  # the method's last answer (None when the server lacks the method)
    direct: dict[str, int]  # the GROUP BY's last answer


async def _measure(base: str, db_url: str, dataset_id: str, s: Settings) -> _Measured:
    """Each round: echo, the method, then the GROUP BY straight on the database (through
    an engine made like the server's), one at a time."""
    from iceprod_server.db.engine import make_engine

    conn = Connection(base)
    engine = make_engine(db_url, pool_size=1)
    timings = Timings()
    answer: Any = None
    direct: dict[str, int] = {}
    try:
        try:
            answer = await conn.call(METHOD, {"dataset_id": dataset_id})
            available = True
        except RPCFailure as e:
            if e.code != -32601:
                raise BenchError(f"{METHOD} failed: {e}") from e
            available = False
        for i in range(s.warmup + s.calls):
            t = timings if i >= s.warmup else None
            await timed(t, conn, "echo", ["hello"])
            if available:
                answer = await timed(t, conn, METHOD, {"dataset_id": dataset_id})
            start = time.perf_counter()
            direct = count_by_status(engine, dataset_id)
            if t is not None:
                t.add("sql", time.perf_counter() - start)
    finally:
        await conn.close()
        engine.dispose()
    return _Measured(timings, answer if available else None, direct)


def run_one(db: str, s: Settings) -> dict[str, Any]:
    ntasks = len(TASK_NAMES)
    njobs = s.tasks // ntasks
    expected = dict(Counter(status_of(n) for n in range(njobs * ntasks)))
    with Cleanup() as cleanup:
        inst = install(cleanup, db, f"count-{db}")
        engine = loader_engine(inst.db_url)
        try:
            dataset_id, load_seconds = load_dataset(engine, njobs, TASK_NAMES, status_of,
                                                    f"{db} dataset")
        finally:
            engine.dispose()
        _server, base = start_server(cleanup, inst.data_dir, {"ICEPROD_QUEUE_DEPTH": "1"})
        print(f"    {db}: {s.calls} rounds of echo, {METHOD} and a GROUP BY in SQL",
              flush=True)
        m = asyncio.run(_measure(base, inst.db_url, dataset_id, s))
    if m.direct != expected:
        raise BenchError(f"{db}: the database holds {m.direct}, loaded {expected}")
    available = m.answer is not None
    if available and m.answer != expected:
        raise BenchError(f"{db}: {METHOD} answered {m.answer}, expected {expected}")
    direct = report.latency_summary(m.timings.latencies["sql"])
    echo = report.latency_summary(m.timings.latencies["echo"])
    # without the method on this server, the query alone stands in for it
    counted = report.latency_summary(m.timings.latencies[METHOD]) if available else direct
    return {
        "tasks": njobs * ntasks, "jobs": njobs, "counts": expected,
        "load_seconds": load_seconds, "method_available": available,
        "count": counted, "echo": echo, "group_by": direct,
        "ratios": {"count_p50/echo_p50": report.ratio(counted["p50_ms"], echo["p50_ms"]),
                   "count_p50/group_by_p50": report.ratio(counted["p50_ms"],
                                                            direct["p50_ms"])},
    }


def run_all(dbs: list[str], s: Settings) -> dict[str, Any]:
    result = {"settings": {"tasks": s.tasks, "calls": s.calls, "warmup": s.warmup,
                           "mix_percent": dict(MIX)},
              "databases": {db: run_one(db, s) for db in dbs}}
    print_result(result)
    return result


def print_result(result: dict[str, Any]) -> None:
    st = result["settings"]
    rows = []
    for db, f in result["databases"].items():
        label = db if f["method_available"] else f"{db} (method missing: GROUP BY only)"
        rows.append([label, f["count"]["p50_ms"], f["count"]["p99_ms"],
                     f["group_by"]["p50_ms"], f["echo"]["p50_ms"], f["echo"]["p99_ms"],
                     report.fmt(f["ratios"]["count_p50/echo_p50"], 0),
                     f"{f['load_seconds']:.0f} s"])
    print()
    print(report.table(
        f"{METHOD}: {st['tasks']:,} tasks, {st['calls']} sequential calls alternating "
        "with echo and a GROUP BY",
        ["database", "p50 ms", "p99 ms", "GROUP BY p50", "echo p50", "echo p99", "p50/echo",
         "bulk load"], rows))
    print("  GROUP BY p50: counting the dataset's rows in the tasks table by status, directly"
          "\n  on the database from the benchmark process, without the server")
    print()
