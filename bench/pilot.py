"""Benchmark 2: the pilot cycle (``new_task`` then ``finish_task``) with 100 concurrent pilots.

For each database, two servers are set up, one with 1,000 and one with 100,000 tasks queued
(bulk-loaded); on MariaDB a third, ``serve --processes 2`` with 1,000 queued on a database
of its own, compared with the one-process server of that queue length. 100 pilots, asyncio
coroutines with one keep-alive connection each and one
shared pilot passkey (told apart by ``X-IceProd-Pilot``, as pilots sharing a key are), each
claim one task at a time and finish it at once. The two servers are measured in alternating
blocks (a few rounds of warm-up cycles then measured cycles), so that changes in the
machine's background load fall on both alike: tasks per second (median of the blocks) and
p50/p99 of each call.

The queue holds the stated length plus every warm-up and measured cycle, so every measured
claim sees at least that many queued tasks. Claims must cost the same whatever the queue
length (IceProd 2.3 scanned the whole queue under one lock and fell from 67 to 15 tasks/s
between 1,000 and 3,000 queued), so the figure that counts is the ratio of the two servers.

Baselines in the same run: ``echo`` from the same 100 coroutines against the same server
just before each block (what an HTTP round trip through this load generator costs), and
the ``wrk`` echo figure of the echo benchmark when it ran. Afterwards the database must hold
exactly as many complete tasks as were finished, and no task claimed twice.
"""
from __future__ import annotations

import asyncio
import ssl
import statistics
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from bench import report
from bench.backends import Installation, install
from bench.load import load_dataset, loader_engine
from bench.procs import BenchError, Cleanup, Process, start_server
from bench.rpcload import Connection, RPCFailure, Timings, close_all, hammer, timed
from iceprod_server.db.models import Task

OFFER = {"cpu": 1, "gpu": 0, "memory": 2.0, "disk": 10.0, "time": 4.0,
         "hostname": "bench-node", "domain": "bench", "gridspec": "bench"}
SOLO_WARMUP = 2
STATS = {"hostname": "bench-node", "time_used": 1.0, "resources": {"cpu": 1, "memory": 0.5}}


@dataclass(frozen=True)
class Settings:
    pilots: int = 100
    warmup: int = 100  # cycles before each measured block
    cycles: int = 2000  # measured, split over the rounds
    rounds: int = 4
    queues: tuple[int, int] = (1000, 100_000)
    echo_seconds: float = 1.5  # echo baseline before each measured block
    solo_cycles: int = 50  # cycles of one pilot alone after each block

    @property
    def consumed(self) -> int:
        """Tasks the whole measurement claims, beyond the queue length it keeps."""
        return self.rounds * (self.warmup + SOLO_WARMUP + self.solo_cycles) + self.cycles


# the load while py-spy samples the server: one queue length, one long block
PROFILE = Settings(warmup=100, cycles=6000, rounds=1, queues=(10_000, 10_000),
                   echo_seconds=0.5, solo_cycles=10)
QUICK = Settings(pilots=20, warmup=20, cycles=200, rounds=2, queues=(1000, 10_000),
                 echo_seconds=0.5, solo_cycles=20)


class _Tickets:
    """Hands out cycle numbers; cycles at or after ``warmup`` are the measured ones.

    A pilot takes a ticket when it has finished its previous cycle, so while every pilot
    is busy, tickets go out at the rate cycles complete. The throughput is taken from the
    first to the last measured ticket: the tail, where pilots run out of tickets and the
    concurrency falls, is left out.
    """

    def __init__(self, warmup: int, cycles: int) -> None:
        self.warmup = warmup
        self.total = warmup + cycles
        self.issued = 0
        self.first_measured = 0.0
        self.last_measured = 0.0
        self.empty = 0

    def take(self) -> int | None:
        if self.issued >= self.total:
            return None
        self.issued += 1
        ticket = self.issued - 1
        if ticket >= self.warmup:
            self.last_measured = time.perf_counter()
            if ticket == self.warmup:
                self.first_measured = self.last_measured
        return ticket

    def rate(self) -> float:
        """Cycles per second while every pilot was busy."""
        window = self.last_measured - self.first_measured
        return (self.total - self.warmup - 1) / window if window > 0 else float("nan")


async def _pilot(conn: Connection, tickets: _Tickets, timings: Timings) -> int:
    """Run cycles until the tickets run out; returns how many tasks it finished."""
    finished = 0
    scratch = Timings()
    while (ticket := tickets.take()) is not None:
        t = timings if ticket >= tickets.warmup else scratch
        while True:
            failure: RPCFailure | None = None
            try:
                claimed = await timed(t, conn, "new_task", OFFER)
            except RPCFailure as e:
                claimed, failure = [], e
            if claimed:
                break
            tickets.empty += 1
            if tickets.empty > 1000:
                raise BenchError("new_task keeps returning no task"
                                 + (f" (last error {failure})" if failure else
                                    ": the queue ran dry"))
            await asyncio.sleep(0.01)
        for task in claimed:
            try:
                await timed(t, conn, "finish_task",
                            {"task_id": task["options"]["task_id"], "stats": STATS})
                finished += 1
            except RPCFailure:
                pass
    return finished


class _Scenario:
    """One server with its queue, and the pilots' connections to it."""

    def __init__(self, db: str, queued: int, inst: Installation, base: str,
                 s: Settings, load_seconds: float, processes: int = 1,
                 context: ssl.SSLContext | None = None, name: str = "") -> None:
        self.db = db
        self.queued = queued
        self.processes = processes
        self.name = name
        self.inst = inst
        self.s = s
        self.load_seconds = load_seconds
        self.conns = [Connection(base, inst.pilot_key, f"bench-pilot-{i:03d}",
                                 context=context)
                      for i in range(s.pilots)]
        self.timings = Timings()
        self.solo = Timings()
        self.echo = Timings()
        self.block_rates: list[float] = []
        self.echo_rates: list[float] = []
        self.seconds = 0.0
        self.finished = 0
        self.empty = 0

    def label(self) -> str:
        if self.name:
            return self.name
        more = f", {self.processes} processes" if self.processes > 1 else ""
        return f"{self.db}, {self.queued:,} queued{more}"

    async def block(self, cycles: int) -> None:
        """An echo baseline, then warm-up cycles, then ``cycles`` measured ones, then one
        pilot alone, whose latencies are those of the calls without contention."""
        async def echo_call(conn: Connection, t: Timings) -> None:
            await timed(t, conn, "echo", ["hello"])

        echo_t, window = await hammer(self.conns, self.s.echo_seconds, echo_call,
                                      warmup=0.3)
        n = len(echo_t.latencies.get("echo", []))
        self.echo.latencies.setdefault("echo", []).extend(echo_t.latencies.get("echo", []))
        self.echo_rates.append(n / window if window > 0 else float("nan"))
        tickets = _Tickets(self.s.warmup, cycles)
        finished = await asyncio.gather(*(_pilot(c, tickets, self.timings)
                                          for c in self.conns))
        self.finished += sum(finished)
        self.empty += tickets.empty
        self.seconds += tickets.last_measured - tickets.first_measured
        self.block_rates.append(tickets.rate())
        solo = _Tickets(SOLO_WARMUP, self.s.solo_cycles)
        self.finished += await _pilot(self.conns[0], solo, self.solo)

    def figures(self) -> dict[str, Any]:
        t = self.timings
        new_task = report.latency_summary(t.latencies.get("new_task", []))
        finish = report.latency_summary(t.latencies.get("finish_task", []))
        echo = report.latency_summary(self.echo.latencies.get("echo", []))
        solo = {name: report.latency_summary(self.solo.latencies.get(name, []))
                for name in ("new_task", "finish_task")}
        echo["calls_per_s"] = statistics.median(self.echo_rates)
        tasks_per_s = statistics.median(self.block_rates)
        calls_per_cycle = (new_task["n"] + finish["n"]) / max(1, self.s.cycles)
        return {
            "tasks_per_s": tasks_per_s, "calls_per_s": tasks_per_s * calls_per_cycle,
            "block_tasks_per_s": self.block_rates, "seconds": self.seconds,
            "new_task": new_task, "finish_task": finish, "echo": echo, "solo": solo,
            "errors": {**t.errors, **self.solo.errors}, "empty_claims": self.empty,
            "finished": self.finished, "queued_at_start": self.queued + self.s.consumed,
            "queued_at_end": self.queued, "load_seconds": self.load_seconds,
        }


def _setup(cleanup: Cleanup, db: str, queued: int, s: Settings,
           processes: int = 1) -> tuple[Installation, str, float, Process]:
    inst = install(cleanup, db, f"pilot-{db}-{queued}-{processes}")
    njobs = queued + s.consumed
    engine = loader_engine(inst.db_url)
    try:
        _, load_seconds = load_dataset(engine, njobs, ["main"], lambda n: "queued",
                                       f"{db}, {queued:,} queued")
    finally:
        engine.dispose()
    server, base = start_server(cleanup, inst.data_dir,
                                {"ICEPROD_QUEUE_DEPTH": str(2 * njobs)},
                                extra_args=("--processes", str(processes)))
    return inst, base, load_seconds, server


async def _measure(scenarios: list[_Scenario], s: Settings) -> None:
    """Measure the scenarios in alternating blocks, so that changes in the machine's
    background load fall on both alike."""
    per_block = [s.cycles // s.rounds + (1 if r < s.cycles % s.rounds else 0)
                 for r in range(s.rounds)]
    try:
        for r, cycles in enumerate(per_block):
            order = scenarios if r % 2 == 0 else scenarios[::-1]
            for sc in order:
                print(f"    round {r + 1}/{s.rounds}: {sc.label()}: "
                      f"{s.pilots} pilots, {s.warmup} warm-up + {cycles} measured cycles",
                      flush=True)
                await sc.block(cycles)
    finally:
        for sc in scenarios:
            await close_all(sc.conns)


def _check_database(inst: Installation, expected_complete: int) -> dict[str, Any]:
    """Every finished task is complete exactly once and none was claimed twice."""
    engine = loader_engine(inst.db_url)
    try:
        with engine.connect() as conn:
            complete = conn.scalar(select(func.count()).select_from(Task)
                                   .where(Task.status == "complete"))
            reclaimed = conn.scalar(select(func.count()).select_from(Task)
                                    .where(Task.attempt > 1))
    finally:
        engine.dispose()
    check = {"complete": int(complete or 0), "claimed_twice": int(reclaimed or 0)}
    if check["complete"] != expected_complete or check["claimed_twice"]:
        raise BenchError(f"database check failed: {check}, expected {expected_complete} "
                         "complete and none claimed twice")
    return check


def run_db(db: str, s: Settings) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """Both queue lengths on one database: two servers, measured in alternating blocks;
    on MariaDB a third, ``serve --processes 2`` on a database of its own with the short
    queue. Returns the figures by queue length, and those of the two-process server."""
    with Cleanup() as cleanup:
        scenarios = []
        for queued in s.queues:
            inst, base, load_seconds, _server = _setup(cleanup, db, queued, s)
            scenarios.append(_Scenario(db, queued, inst, base, s, load_seconds))
        if db == "mariadb":
            inst, base, load_seconds, _server = _setup(cleanup, db, s.queues[0], s, 2)
            scenarios.append(_Scenario(db, s.queues[0], inst, base, s, load_seconds, 2))
        asyncio.run(_measure(scenarios, s))
        out = {}
        two = None
        for sc in scenarios:
            fig = sc.figures()
            fig["check"] = _check_database(sc.inst, sc.finished)
            if sc.processes == 1:
                out[str(sc.queued)] = fig
            else:
                two = fig
        return out, two


def run_all(dbs: list[str], s: Settings, echo_result: dict[str, Any] | None) -> dict[str, Any]:
    small, large = s.queues
    wrk_echo = echo_result["targets"]["echo"]["rps"] if echo_result else None
    scenarios: dict[str, dict[str, Any]] = {}
    ratios: dict[str, dict[str, float]] = {}
    two_processes: dict[str, dict[str, Any]] = {}
    for db in dbs:
        scenarios[db], two = run_db(db, s)
        for fig in [*scenarios[db].values(), *([two] if two else [])]:
            fig["ratios"] = {
                "calls_per_s/echo_calls_per_s": report.ratio(fig["calls_per_s"],
                                                             fig["echo"]["calls_per_s"]),
                "new_task_p50/echo_p50": report.ratio(fig["new_task"]["p50_ms"],
                                                      fig["echo"]["p50_ms"]),
                "tasks_per_s/wrk_echo_rps": report.ratio(fig["tasks_per_s"], wrk_echo),
            }
        a, b = scenarios[db][str(small)], scenarios[db][str(large)]
        if two is not None:
            two["ratios"]["tasks_per_s/one_process"] = report.ratio(two["tasks_per_s"],
                                                                    a["tasks_per_s"])
            two_processes[db] = two
        ratios[db] = {
            "tasks_per_s_large/small": report.ratio(b["tasks_per_s"], a["tasks_per_s"]),
            "new_task_p50_large/small": report.ratio(b["new_task"]["p50_ms"],
                                                     a["new_task"]["p50_ms"]),
            "finish_task_p50_large/small": report.ratio(b["finish_task"]["p50_ms"],
                                                        a["finish_task"]["p50_ms"]),
            "solo_new_task_p50_large/small": report.ratio(b["solo"]["new_task"]["p50_ms"],
                                                          a["solo"]["new_task"]["p50_ms"]),
        }
    result = {"settings": {"pilots": s.pilots, "warmup": s.warmup, "cycles": s.cycles,
                           "rounds": s.rounds, "queues": list(s.queues),
                           "echo_seconds": s.echo_seconds, "solo_cycles": s.solo_cycles},
              "wrk_echo_rps": wrk_echo, "scenarios": scenarios, "ratios": ratios,
              "two_processes": two_processes}
    print_result(result)
    return result


def print_result(result: dict[str, Any]) -> None:
    st = result["settings"]
    rows = []
    small = result["settings"]["queues"][0]
    named = [(f"{db}, {int(queued):,} queued", f)
             for db, by_size in result["scenarios"].items() for queued, f in by_size.items()]
    named += [(f"{db}, {small:,} queued, 2 processes", f)
              for db, f in result.get("two_processes", {}).items()]
    for name, f in named:
        rows.append([
            name, f["tasks_per_s"],
            f["new_task"]["p50_ms"], f["new_task"]["p99_ms"],
            f["finish_task"]["p50_ms"], f["finish_task"]["p99_ms"],
            f["echo"]["calls_per_s"], f["echo"]["p50_ms"],
            report.fmt_ratio(f["ratios"]["calls_per_s/echo_calls_per_s"]),
            report.fmt_ratio(f["ratios"]["tasks_per_s/wrk_echo_rps"]),
            sum(f["errors"].values())])
    print()
    print(report.table(
        f"pilot cycle (new_task + finish_task): {st['pilots']} pilots, {st['cycles']:,} "
        f"measured cycles in {st['rounds']} rounds, {st['warmup']} warm-up cycles each",
        ["scenario", "tasks/s", "new p50", "new p99", "finish p50", "finish p99",
         "echo/s", "echo p50", "calls/echo", "tasks/wrk", "errors"], rows))
    print("  latencies in ms; echo/s and echo p50: echo from the same pilots against the same"
          "\n  server; calls/echo: (new_task + finish_task) calls/s over that echo rate;"
          "\n  tasks/wrk: tasks/s over the wrk echo requests/s of the echo benchmark")
    rows = []
    for db, by_size in result["scenarios"].items():
        for queued, f in by_size.items():
            solo = f["solo"]
            rows.append([f"{db}, {int(queued):,} queued", solo["new_task"]["p50_ms"],
                         solo["new_task"]["p99_ms"], solo["finish_task"]["p50_ms"],
                         solo["finish_task"]["p99_ms"]])
    print()
    print(report.table(
        f"one pilot alone: {st['rounds']} x {st['solo_cycles']} cycles (latency in ms of "
        "each call without contention)",
        ["scenario", "new p50", "new p99", "finish p50", "finish p99"], rows))
    small, large = st["queues"]
    rows = [[db, report.fmt_ratio(r["tasks_per_s_large/small"]),
             report.fmt_ratio(r["new_task_p50_large/small"]),
             report.fmt_ratio(r["finish_task_p50_large/small"]),
             report.fmt_ratio(r["solo_new_task_p50_large/small"])]
            for db, r in result["ratios"].items()]
    print()
    print(report.table(
        f"queue length: {large:,} queued over {small:,} queued (1.0 = the same cost)",
        ["database", "tasks/s", "new_task p50", "finish_task p50", "alone: new_task p50"],
        rows))
    print()
