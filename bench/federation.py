"""Benchmark 7: work through a client site against the same pilots at the master directly.

A master (MariaDB when it answers, else SQLite) and one client site (SQLite, joined with
``iceprod-server join``), each a real ``iceprod-server serve``. Datasets of one-task jobs
are submitted at the master.

1. Throughput: ``pilots`` coroutine pilots run ``new_task`` + ``finish_task`` cycles, first
   against the master directly, then against the client (same count, same offer). Figures:
   tasks/s at each, and through the client the rate at which the master's count of
   complete tasks grows (what a user at the master sees). Goal: through a client >= 0.7x
   direct.
2. Lag: during the client run, each ``finish_task`` at the client is timed, and the
   master's ``public_get_number_of_tasks_in_each_state`` is polled every 0.1 s; the k-th
   completion's lag is when the master first counted k minus when the k-th finish returned.
   Goal: p95 <= 5 s under load.
3. Catch-up: the master is stopped while the client's pilots finish ``catchup_tasks`` tasks
   (two outbox changes each: the task and its stat), then started again; the figure is
   the time from its return until it counts them all. Goal: 10,000 changes in <= 30 s.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import report
from bench.backends import install, mariadb_available
from bench.load import dataset_config
from bench.procs import (
    HOST,
    BenchError,
    Cleanup,
    Process,
    free_port,
    run_cli,
    server_command,
)
from bench.rpcload import Connection, RPCFailure, close_all

OFFER = {"cpu": 1, "gpu": 0, "memory": 2.0, "disk": 10.0, "time": 4.0,
         "hostname": "bench-node", "domain": "bench", "gridspec": "bench"}
STATS = {"hostname": "bench-node", "time_used": 1.0}
COUNT = "public_get_number_of_tasks_in_each_state"


@dataclass(frozen=True)
class Settings:
    pilots: int = 20
    tasks: int = 2000  # per throughput run
    catchup_tasks: int = 5000  # 10,000 outbox changes


QUICK = Settings(pilots=8, tasks=300, catchup_tasks=500)


async def _pilots(base: str, key: str, n: int, count: int,
                  finished_at: list[float]) -> float:
    """``n`` pilots finish ``count`` tasks between them; returns the seconds it took."""
    conns = [Connection(base, key, pilot_ref=f"bench{i}") for i in range(n)]
    left = count
    empty = 0
    start = time.perf_counter()

    async def pilot(conn: Connection) -> None:
        nonlocal left, empty
        while left > 0:
            try:
                claimed = await conn.call("new_task", OFFER)
            except RPCFailure:
                claimed = []
            if not claimed:
                empty += 1
                if empty > 20000:
                    raise BenchError("new_task keeps returning no task")
                await asyncio.sleep(0.02)
                continue
            for task in claimed:
                await conn.call("finish_task", {"task_id": task["options"]["task_id"],
                                                "stats": STATS})
                finished_at.append(time.time())
                left -= 1

    try:
        await asyncio.gather(*(pilot(c) for c in conns))
    finally:
        await close_all(conns)
    return time.perf_counter() - start


async def _complete(conn: Connection, dataset_id: str) -> int:
    counts = await conn.call(COUNT, {"dataset_id": dataset_id})
    return int(counts.get("complete", 0))


async def _watch(base: str, dataset_id: str, target: int, seen: list[tuple[float, int]],
                 timeout: float) -> float:
    """Poll the master's count until it reaches ``target``; returns when it did."""
    conn = Connection(base)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            try:
                n = await _complete(conn, dataset_id)
            except (RPCFailure, OSError):
                await asyncio.sleep(0.2)
                continue
            seen.append((time.time(), n))
            if n >= target:
                return time.time()
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    raise BenchError(f"the master counted {seen[-1][1] if seen else 0} of {target} complete "
                     f"tasks after {timeout:.0f} s")


def _submit(base: str, user_key: str, njobs: int) -> str:
    async def go() -> str:
        conn = Connection(base, user_key)
        try:
            return str(await conn.call("submit_dataset", {
                "config": dataset_config(["work"]), "description": "federation bench",
                "njobs": njobs}))
        finally:
            await conn.close()
    return asyncio.run(go())


def _lags(finished: list[float], seen: list[tuple[float, int]]) -> list[float]:
    finished = sorted(finished)
    lags = []
    i = 0
    for k, t_finish in enumerate(finished, start=1):
        while i < len(seen) and seen[i][1] < k:
            i += 1
        if i == len(seen):
            break
        lags.append(max(0.0, seen[i][0] - t_finish))
    return lags


def _serve(cleanup: Cleanup, data_dir: Path, env: dict[str, str], name: str,
           port: int) -> Process:
    """``iceprod-server serve`` on ``port`` (the master comes back where its clients
    expect it)."""
    argv = [*server_command(), "serve", "--data-dir", str(data_dir), "--host", HOST,
            "--port", str(port)]
    proc = Process(name, argv, data_dir / f"{name}.log",
                   {**os.environ, "ICEPROD_LOG_LEVEL": "WARNING", **env})
    cleanup.push(f"{name} (pid {proc.pid})", proc.stop)
    proc.wait_ready(f"http://{HOST}:{port}/healthz")
    return proc


async def _wait_queued(base: str, dataset_id: str, target: int, timeout: float) -> None:
    """Until the server at ``base`` has ``target`` tasks of the dataset queued."""
    conn = Connection(base)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            try:
                counts = await conn.call(COUNT, {"dataset_id": dataset_id})
                if counts.get("queued", 0) >= target:
                    return
            except RPCFailure:
                pass  # not pulled yet
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
    raise BenchError(f"{base} did not queue {target} tasks in {timeout:.0f} s")


def run(cleanup: Cleanup, s: Settings) -> dict[str, Any]:
    backend = "mariadb" if mariadb_available() else "sqlite"
    master = install(cleanup, backend, "fed-master")
    env = {"ICEPROD_SCHEDULER_INTERVAL": "0.5", "ICEPROD_QUEUE_DEPTH": "20000"}
    master_port, client_port = free_port(), free_port()
    master_url = f"http://{HOST}:{master_port}"
    client_url = f"http://{HOST}:{client_port}"
    master_proc = _serve(cleanup, master.data_dir, env, "master", master_port)
    out = run_cli(["add-site", "bench-client", "--data-dir", str(master.data_dir)])
    site = dict(line.split("=", 1) for line in out.split() if "=" in line)
    run_cli(["add-user", "bench", "--password-stdin", "--data-dir", str(master.data_dir)],
            stdin="bench-password\n")
    user_key = run_cli(["passkey", "issue", "--data-dir", str(master.data_dir), "--role",
                        "user", "--user", "bench"]).strip().splitlines()[-1]
    client = install(cleanup, "sqlite", "fed-client")
    run_cli(["join", "--data-dir", str(client.data_dir), "--master", master_url,
             "--site-id", site["site_id"], "--key", site["site_key"]])

    # 1. the pilots at the master directly (the client is not running yet)
    # (each run starts once the first tasks are queued where its pilots ask)
    direct_ds = _submit(master_url, user_key, s.tasks)
    asyncio.run(_wait_queued(master_url, direct_ds, min(s.tasks, 2 * s.pilots), 120))
    direct_s = asyncio.run(_pilots(master_url, master.pilot_key, s.pilots, s.tasks, []))

    # 2. the same pilots at the client, the master's count watched
    client_env = {**env, "ICEPROD_SITE_INTERVAL": "0.5",
                  "ICEPROD_SITE_THRESHOLD": str(10 * s.pilots),
                  "ICEPROD_SITE_PULL": str(20 * s.pilots)}
    client_proc = _serve(cleanup, client.data_dir, client_env, "client", client_port)
    site_ds = _submit(master_url, user_key, s.tasks)
    finished: list[float] = []
    seen: list[tuple[float, int]] = []

    async def through_client() -> tuple[float, float, float]:
        await _wait_queued(client_url, site_ds, min(s.tasks, 2 * s.pilots), 120)
        started = time.time()
        watch = asyncio.ensure_future(_watch(master_url, site_ds, s.tasks, seen, 600))
        local_s = await _pilots(client_url, client.pilot_key, s.pilots, s.tasks, finished)
        return started, local_s, await watch

    started, local_s, at_master = asyncio.run(through_client())
    lags = _lags(finished, seen)

    # 3. the client holds the whole dataset, the master goes away while the pilots finish
    #    it, and comes back
    client_proc.stop()
    client_proc = _serve(cleanup, client.data_dir,
                         {**client_env, "ICEPROD_SITE_THRESHOLD": str(s.catchup_tasks),
                          "ICEPROD_SITE_PULL": "1000"}, "client-catchup", client_port)
    catch_ds = _submit(master_url, user_key, s.catchup_tasks)
    asyncio.run(_wait_queued(client_url, catch_ds, s.catchup_tasks, 600))
    master_proc.stop()
    asyncio.run(_pilots(client_url, client.pilot_key, s.pilots, s.catchup_tasks, []))
    master_proc = _serve(cleanup, master.data_dir, env, "master-again", master_port)
    back = time.time()
    caught_up = asyncio.run(_watch(master_url, catch_ds, s.catchup_tasks, [], 600))

    result: dict[str, Any] = {
        "settings": {"pilots": s.pilots, "tasks": s.tasks, "catchup_tasks": s.catchup_tasks,
                     "master_db": backend, "client_db": "sqlite"},
        "direct_tasks_per_s": s.tasks / direct_s,
        "client_tasks_per_s": s.tasks / local_s,
        "master_count_tasks_per_s": s.tasks / (at_master - started),
        "lag_s": {"n": len(lags), "p50": report.percentile(lags, 50),
                  "p95": report.percentile(lags, 95), "max": max(lags, default=math.nan)},
        "catchup_changes": 2 * s.catchup_tasks,
        "catchup_s": caught_up - back,
    }
    result["ratios"] = {
        "client/direct": report.ratio(result["client_tasks_per_s"],
                                      result["direct_tasks_per_s"]),
        "master_count/direct": report.ratio(result["master_count_tasks_per_s"],
                                            result["direct_tasks_per_s"])}
    print_result(result)
    return result


def verdicts(result: dict[str, Any]) -> dict[str, bool]:
    return {"client >= 0.7x direct": result["ratios"]["master_count/direct"] >= 0.7,
            "lag p95 <= 5 s": result["lag_s"]["p95"] <= 5.0,
            "catch-up <= 30 s": result["catchup_s"] <= 30.0}


def print_result(result: dict[str, Any]) -> None:
    st = result["settings"]
    print(report.table(
        f"federation: {st['pilots']} pilots, {st['tasks']:,} tasks per run, master on "
        f"{st['master_db']}, client on {st['client_db']}",
        ["measure", "value"],
        [["tasks/s, pilots at the master", report.fmt(result["direct_tasks_per_s"])],
         ["tasks/s, pilots at the client", report.fmt(result["client_tasks_per_s"])],
         ["tasks/s, counted at the master", report.fmt(result["master_count_tasks_per_s"])],
         ["through the client / direct", report.fmt_ratio(
             result["ratios"]["master_count/direct"])],
         ["lag finish -> master count p50 (s)", report.fmt(result["lag_s"]["p50"], 2)],
         ["lag p95 (s)", report.fmt(result["lag_s"]["p95"], 2)],
         [f"catch-up of {result['catchup_changes']:,} changes (s)",
          report.fmt(result["catchup_s"])]]))
    print("  goals: " + ", ".join(f"{name}: {'met' if ok else 'MISSED'}"
                                  for name, ok in verdicts(result).items()))


def summary_lines(result: dict[str, Any]) -> list[str]:
    return [f"  federation: through a client / direct "
            f"{report.fmt_ratio(result['ratios']['master_count/direct'])}, lag p95 "
            f"{report.fmt(result['lag_s']['p95'], 2)} s, catch-up of "
            f"{result['catchup_changes']:,} changes {report.fmt(result['catchup_s'])} s"]
