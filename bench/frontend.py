"""Benchmark 8: the pilot cycle through nginx over HTTPS, against Tornado directly.

Three servers on MariaDB, each with a database of its own and the same queue: one that the
pilots reach directly (``serve``, plain HTTP, as in benchmark 2), and two behind nginx over
HTTPS, ``serve --processes 1`` and ``serve --processes 2``. nginx runs
``deploy/nginx.conf`` itself, rendered as the tests render it (``tests/support/nginx.py``:
loopback ports, this checkout's static files, a throwaway certificate authority from
``tests/support/tls.py`` signing the server's certificate). The pilots (benchmark 2's
coroutines, one keep-alive connection each, TLS through nginx) trust that authority. The
three are measured in alternating rounds; the ratios say what the front end costs, and
what a second process buys behind it.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import time
from pathlib import Path
from typing import Any

from bench import pilot, report
from bench.procs import BenchError, Cleanup, Process, free_port, temp_dir
from tests.support.nginx import Certs, render_for_test
from tests.support.tls import make_ca

DEPLOY_CONF = Path(__file__).resolve().parents[1] / "deploy" / "nginx.conf"
SETTINGS = pilot.Settings(pilots=100, warmup=100, cycles=1500, rounds=3,
                          queues=(1000, 1000), echo_seconds=1.0, solo_cycles=10)
QUICK = pilot.Settings(pilots=20, warmup=20, cycles=200, rounds=2, queues=(1000, 1000),
                       echo_seconds=0.5, solo_cycles=5)


def start_nginx(cleanup: Cleanup, workdir: Path, upstream_port: int,
                certs: Certs) -> str:
    """nginx with the deploy config in front of ``upstream_port``; its https base URL."""
    program = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(program).exists():
        raise BenchError("nginx is not installed (apt-get install -y nginx)")
    port = free_port()
    (workdir / "nginx-upload").mkdir(exist_ok=True)
    conf = workdir / "nginx.conf"
    conf.write_text(render_for_test(DEPLOY_CONF.read_text(), certs, workdir, upstream_port,
                                    port, free_port(), https=True))
    proc = Process("nginx", [program, "-p", str(workdir), "-c", str(conf),
                             "-g", "daemon off;"], workdir / "nginx.out")
    cleanup.push(f"nginx (pid {proc.pid})", proc.stop)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BenchError(f"nginx exited:\n{proc.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return f"https://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"nginx did not listen on {port}:\n{proc.log_tail()}")


def _scenario(cleanup: Cleanup, s: pilot.Settings, processes: int, certs: Certs | None,
              context: ssl.SSLContext | None) -> pilot._Scenario:
    queued = s.queues[0]
    inst, base, load_seconds, _server = pilot._setup(cleanup, "mariadb", queued, s,
                                                     processes)
    name = f"direct, {processes} process"
    if certs is not None:
        port = int(base.rsplit(":", 1)[1])
        base = start_nginx(cleanup, temp_dir(cleanup, "nginx"), port, certs)
        name = f"nginx https, {processes} process{'es' if processes > 1 else ''}"
    return pilot._Scenario("mariadb", queued, inst, base, s, load_seconds, processes,
                           context=context if certs else None, name=name)


def run(cleanup: Cleanup, s: pilot.Settings) -> dict[str, Any]:
    ca = make_ca(temp_dir(cleanup, "ca") / "ca", "Bench Frontend")
    server_cert = ca.issue("server")
    certs = Certs(server_cert.cert, server_cert.key, ca.cert)
    context = ssl.create_default_context(cafile=str(ca.cert))
    scenarios = [_scenario(cleanup, s, 1, None, None),
                 _scenario(cleanup, s, 1, certs, context),
                 _scenario(cleanup, s, 2, certs, context)]
    asyncio.run(pilot._measure(scenarios, s))
    figures = {}
    for sc in scenarios:
        fig = sc.figures()
        fig["check"] = pilot._check_database(sc.inst, sc.finished)
        figures[sc.label()] = fig
    direct, one, two = (sc.figures()["tasks_per_s"] for sc in scenarios)
    ratios = {"nginx_1_process/direct": report.ratio(one, direct),
              "nginx_2_processes/direct": report.ratio(two, direct),
              "nginx_2_processes/nginx_1_process": report.ratio(two, one)}
    result = {"settings": {"pilots": s.pilots, "cycles": s.cycles, "rounds": s.rounds,
                           "queued": s.queues[0]},
              "scenarios": figures, "ratios": ratios}
    print_result(result)
    return result


def print_result(result: dict[str, Any]) -> None:
    st = result["settings"]
    rows = [[name, f["tasks_per_s"], f["new_task"]["p50_ms"], f["new_task"]["p99_ms"],
             f["finish_task"]["p50_ms"], f["finish_task"]["p99_ms"],
             f["echo"]["calls_per_s"], sum(f["errors"].values())]
            for name, f in result["scenarios"].items()]
    print()
    print(report.table(
        f"pilot cycle on MariaDB, {st['queued']:,} queued, through nginx (HTTPS) and "
        f"directly: {st['pilots']} pilots, {st['cycles']:,} cycles in {st['rounds']} rounds",
        ["scenario", "tasks/s", "new p50", "new p99", "finish p50", "finish p99",
         "echo/s", "errors"], rows))
    print()
    print(report.table("ratios of tasks/s (1.0 = the same)", ["ratio", "value"],
                       [[k, report.fmt_ratio(v)] for k, v in result["ratios"].items()]))
    print()


def summary_lines(result: dict[str, Any]) -> list[str]:
    r = result["ratios"]
    return [f"  pilot cycle through nginx (HTTPS) / direct Tornado, MariaDB: 1 process "
            f"{report.fmt_ratio(r['nginx_1_process/direct'])}, 2 processes "
            f"{report.fmt_ratio(r['nginx_2_processes/direct'])}; 2 / 1 process behind "
            f"nginx {report.fmt_ratio(r['nginx_2_processes/nginx_1_process'])}"]
