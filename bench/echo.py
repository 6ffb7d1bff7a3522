"""Benchmark 1: ``echo`` over JSON-RPC against a bare Tornado hello-world handler.

Both servers run as separate processes on loopback and take the same load from ``wrk``
with the same POST body (``bench/echo.lua``). The figure that counts is the ratio
echo/hello: what the JSON-RPC stack (body parsing, dispatch, parameter binding, JSON
encoding) costs on top of Tornado itself. ``echo`` with a passkey adds the authentication
step (a database lookup, cached for ``auth_cache_seconds``).

The targets are measured in rounds, in a rotating order, and each figure is the median of
its rounds, so that a burst of load from other users of the machine does not land on one
target only.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import report
from bench.backends import install
from bench.procs import BenchError, Cleanup, start_hello, start_server

LUA = Path(__file__).resolve().parent / "echo.lua"
BODY = b'{"jsonrpc": "2.0", "method": "echo", "params": ["hello"], "id": 1}'


@dataclass(frozen=True)
class Settings:
    seconds: int = 8
    rounds: int = 3
    threads: int = 2
    connections: int = 50


QUICK = Settings(seconds=2, rounds=1)


def wrk(url: str, s: Settings, passkey: str | None = None) -> dict[str, Any]:
    """One ``wrk`` run; returns requests/s, latency percentiles (ms) and errors."""
    env = dict(os.environ)
    env.pop("BENCH_PASSKEY", None)
    if passkey:
        env["BENCH_PASSKEY"] = passkey
    argv = ["wrk", f"-t{s.threads}", f"-c{s.connections}", f"-d{s.seconds}s",
            "--timeout", "10s", "-s", str(LUA), url]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env,
                          timeout=s.seconds + 60, check=False)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({proc.returncode}): {proc.stderr.strip()}")
    raw = json.loads(line.removeprefix("BENCH_JSON "))
    seconds = raw["duration_us"] / 1e6
    lat = raw["latency_us"]
    return {"requests": raw["requests"], "seconds": seconds,
            "rps": raw["requests"] / seconds,
            "p50_ms": lat["p50"] / 1000, "p99_ms": lat["p99"] / 1000,
            "errors": sum(raw["errors"].values()), "error_kinds": raw["errors"]}


def _post(url: str, passkey: str | None = None) -> bytes:
    headers = {"Content-Type": "application/json"}
    if passkey:
        headers["Authorization"] = f"Bearer {passkey}"
    request = urllib.request.Request(url, data=BODY, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as r:
        body: bytes = r.read()
        return body


def _check(targets: dict[str, tuple[str, str | None]]) -> None:
    """Each target must answer the benchmark's request correctly before it is timed."""
    for name, (url, key) in targets.items():
        body = _post(url, key)
        if name == "hello":
            ok = body == b"Hello, world"
        else:
            answer = json.loads(body)
            ok = answer.get("result") == "hello"
        if not ok:
            raise BenchError(f"{name} answered {body[:200]!r} instead of the expected result")


def run(cleanup: Cleanup, s: Settings) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed (apt-get install -y wrk)")
    inst = install(cleanup, "sqlite", "echo")
    _server, base = start_server(cleanup, inst.data_dir, {})
    _hello, hello_base = start_hello(cleanup, inst.data_dir)
    targets: dict[str, tuple[str, str | None]] = {
        "hello": (hello_base + "/", None),
        "echo": (base + "/jsonrpc", None),
        "echo_passkey": (base + "/jsonrpc", inst.pilot_key),
    }
    _check(targets)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    names = list(targets)
    for r in range(s.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            url, key = targets[name]
            print(f"    round {r + 1}/{s.rounds}: {name} ({s.seconds} s)", flush=True)
            runs[name].append(wrk(url, s, key))
    _check(targets)  # still answering correctly after the load
    figures = {name: _median_run(rs) for name, rs in runs.items()}
    hello = figures["hello"]["rps"]
    result = {
        "settings": {"seconds": s.seconds, "rounds": s.rounds, "threads": s.threads,
                     "connections": s.connections, "database": "sqlite"},
        "targets": figures,
        "runs": runs,
        "ratios": {
            "echo/hello": report.ratio(figures["echo"]["rps"], hello),
            "echo_passkey/hello": report.ratio(figures["echo_passkey"]["rps"], hello),
            "echo_passkey/echo": report.ratio(figures["echo_passkey"]["rps"],
                                              figures["echo"]["rps"]),
        },
    }
    print_result(result)
    return result


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"rps": statistics.median(r["rps"] for r in runs),
            "p50_ms": statistics.median(r["p50_ms"] for r in runs),
            "p99_ms": statistics.median(r["p99_ms"] for r in runs),
            "requests": sum(r["requests"] for r in runs),
            "errors": sum(r["errors"] for r in runs)}


def print_result(result: dict[str, Any]) -> None:
    st = result["settings"]
    t = result["targets"]
    hello = t["hello"]["rps"]
    labels = {"hello": "bare Tornado hello-world", "echo": "echo over JSON-RPC",
              "echo_passkey": "echo over JSON-RPC + passkey"}
    rows = [[labels[name], f["rps"], f["p50_ms"], f["p99_ms"], f["errors"],
             report.fmt_ratio(report.ratio(f["rps"], hello))] for name, f in t.items()]
    print()
    print(report.table(
        f"echo vs hello-world: wrk -t{st['threads']} -c{st['connections']}, "
        f"{st['rounds']} x {st['seconds']} s per target (median of rounds)",
        ["server", "requests/s", "p50 ms", "p99 ms", "errors", "ratio to hello"], rows))
    print()
