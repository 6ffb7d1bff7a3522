"""``python -m bench``: run the benchmarks, print their tables, save the figures as JSON.

Usage::

    python -m bench [--quick]
                    [--only echo,pilot,count,pages,files,gridftp,federation,frontend]
                    [--db sqlite,mariadb]
    python -m bench --profile pilot [--quick] [--db sqlite,mariadb]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from bench import (
    count,
    echo,
    federation,
    files,
    frontend,
    gridftp,
    pages,
    pilot,
    profile,
    report,
)
from bench.backends import BACKENDS, mariadb_available
from bench.procs import BenchError, Cleanup, interrupt_on_sigterm

BENCHMARKS = ("echo", "pilot", "count", "pages", "files", "gridftp", "federation",
              "frontend")


def _names(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {', '.join(unknown) or '(none)'}; choose from "
            f"{','.join(allowed)}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the IceProd server: echo vs a bare Tornado handler, the "
        "pilot cycle at two queue lengths, task counts on a million-task dataset, the "
        "pages' render times with a million tasks, the file proxy (1 GB, cold and cached) "
        "vs a direct download, the GridFTP library backend vs globus-url-copy, work "
        "through a client site vs at the master directly, and the pilot cycle through nginx over "
        "HTTPS (1 and 2 processes) vs Tornado directly. "
        "Figures are printed as tables with ratios to baselines measured in the same run, "
        "and saved under bench/results/.")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and short runs: a smoke test of a few minutes")
    parser.add_argument("--only", default=",".join(BENCHMARKS), metavar="LIST",
                        type=lambda t: _names(t, BENCHMARKS, "benchmark"),
                        help="benchmarks to run, comma-separated (default: all: "
                             "echo,pilot,count,pages,files,gridftp,federation,frontend)")
    parser.add_argument("--db", default=None, metavar="LIST",
                        type=lambda t: _names(t, BACKENDS, "database"),
                        help="databases for the pilot, count and pages benchmarks "
                             "(default: "
                             "sqlite,mariadb; MariaDB is skipped with a note when "
                             "127.0.0.1:3306 does not answer)")
    parser.add_argument("--profile", default=None, metavar="NAME", choices=profile.PROFILES,
                        help="instead of the benchmarks, run the pilot load against one "
                             "server per database while py-spy samples it, and write the "
                             "flame graph (SVG) under bench/results/")
    return parser.parse_args(argv)


def _databases(requested: list[str] | None, results: dict[str, Any]) -> list[str]:
    dbs = requested or list(BACKENDS)
    if "mariadb" in dbs:
        version = mariadb_available()
        results["machine"]["mariadb"] = version
        if version is None:
            if requested:
                raise BenchError("MariaDB does not answer on 127.0.0.1:3306 (user root)")
            print("note: MariaDB does not answer on 127.0.0.1:3306: skipping it\n")
            dbs = [d for d in dbs if d != "mariadb"]
    return dbs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on_sigterm()
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"),
                               "quick": args.quick, "machine": report.machine(),
                               "benchmarks": {}}
    started = time.monotonic()
    m = results["machine"]
    print(f"IceProd server benchmarks on {m['host']}: {m['cpus']} CPUs, load average "
          f"{m['load_average'][0]:.2f}, Python {m['python']}, Tornado {m['tornado']}, "
          f"SQLite {m['sqlite']}{' (quick run)' if args.quick else ''}\n")
    try:
        if args.profile:
            dbs = _databases(args.db, results)
            results["profile"] = profile.run(
                args.profile, dbs, pilot.QUICK if args.quick else pilot.PROFILE)
            return 0
        dbs = (_databases(args.db, results) if {"pilot", "count", "pages"} & set(args.only)
               else [])
        if "frontend" in args.only and mariadb_available() is None:
            if args.only != list(BENCHMARKS):
                raise BenchError("the frontend benchmark needs MariaDB on 127.0.0.1:3306 "
                                 "(user root)")
            print("note: MariaDB does not answer on 127.0.0.1:3306: skipping the frontend "
                  "benchmark\n")
            args.only = [n for n in args.only if n != "frontend"]
        runners: dict[str, Callable[[], Any]] = {
            "echo": lambda: _with_cleanup(
                lambda c: echo.run(c, echo.QUICK if args.quick else echo.Settings())),
            "pilot": lambda: pilot.run_all(
                dbs, pilot.QUICK if args.quick else pilot.Settings(),
                results["benchmarks"].get("echo")),
            "count": lambda: count.run_all(
                dbs, count.QUICK if args.quick else count.Settings()),
            "pages": lambda: pages.run_all(
                dbs, pages.QUICK if args.quick else pages.Settings()),
            "files": lambda: _with_cleanup(
                lambda c: files.run(c, files.QUICK if args.quick else files.Settings())),
            "gridftp": lambda: _with_cleanup(
                lambda c: gridftp.run(c, gridftp.QUICK if args.quick else gridftp.Settings())),
            "federation": lambda: _with_cleanup(
                lambda c: federation.run(c, federation.QUICK if args.quick
                                         else federation.Settings())),
            "frontend": lambda: _with_cleanup(
                lambda c: frontend.run(c, frontend.QUICK if args.quick
                                       else frontend.SETTINGS)),
        }
        for name in BENCHMARKS:
            if name in args.only:
                print(f"== {name}", flush=True)
                results["benchmarks"][name] = runners[name]()
    except KeyboardInterrupt:
        print("\ninterrupted: every server and database started was stopped and removed",
              file=sys.stderr)
        return 130
    except BenchError as e:
        print(f"\nbenchmark failed: {e}", file=sys.stderr)
        return 1
    finally:
        results["seconds"] = round(time.monotonic() - started, 1)
        if results["benchmarks"] or results.get("profile"):
            path = report.write_results(report.clean_nan(results))
            print(f"figures saved to {path}")
    goals = goal_lines(results)
    if goals:
        print("\n== the pilot hot path: ratios measured in this run, goals beside them")
        print("\n".join(goals))
    summary = summary_lines(results)
    if summary:
        print("\n== summary (ratios measured in this run)")
        print("\n".join(summary))
    print(f"\ntotal time {results['seconds']:.0f} s")
    return 0


def _with_cleanup(fn: Callable[[Cleanup], Any]) -> Any:
    with Cleanup() as cleanup:
        return fn(cleanup)


def _goal(label: str, value: float | None, goal: str) -> str:
    shown = "-" if value is None else report.fmt_ratio(value)
    return f"  {label:<62} {shown:>6}   goal {goal}"


def goal_lines(results: dict[str, Any]) -> list[str]:
    """The five ratios of the pilot hot path, and new_task's latency under load."""
    b = results["benchmarks"]
    if "pilot" not in b:
        return []
    p = b["pilot"]
    small, large = p["settings"]["queues"]
    lines = []
    echo = b.get("echo", {}).get("ratios", {}).get("echo/hello")
    lines.append(_goal("echo over JSON-RPC / bare Tornado hello (wrk)", echo, ">= 0.85"))
    for db, goal in (("sqlite", ">= 0.40"), ("mariadb", ">= 0.25")):
        fig = p["scenarios"].get(db, {}).get(str(small))
        lines.append(_goal(f"pilot cycle {db}, 1 process: calls/s / echo calls/s",
                           fig["ratios"]["calls_per_s/echo_calls_per_s"] if fig else None,
                           goal))
    two = p.get("two_processes", {}).get("mariadb")
    lines.append(_goal("MariaDB, 2 processes on one database / 1 process (tasks/s)",
                       two["ratios"]["tasks_per_s/one_process"] if two else None,
                       ">= 1.0, never lower"))
    for db, r in p["ratios"].items():
        lines.append(_goal(f"{db}: tasks/s with {large:,} queued / with {small:,}",
                           r["tasks_per_s_large/small"], ">= 0.9"))
    for db, by_size in p["scenarios"].items():
        t = by_size[str(small)]["new_task"]
        lines.append(f"  new_task at {p['settings']['pilots']} pilots, {db}, {small:,} queued: "
                     f"p50 {report.fmt(t['p50_ms'])} ms, p99 {report.fmt(t['p99_ms'])} ms"
                     + ("   goal p99 <= 200 ms" if db == "sqlite" else ""))
    return lines


def summary_lines(results: dict[str, Any]) -> list[str]:
    b = results["benchmarks"]
    lines = []
    if "echo" in b:
        r = b["echo"]["ratios"]
        lines.append(f"  echo / hello-world requests/s:            "
                     f"{report.fmt_ratio(r['echo/hello'])}")
        lines.append(f"  echo with passkey / hello-world:           "
                     f"{report.fmt_ratio(r['echo_passkey/hello'])}")
    if "pilot" in b:
        small, large = (f"{n:,}" for n in b["pilot"]["settings"]["queues"])
        for db, r in b["pilot"]["ratios"].items():
            lines.append(f"  pilot cycle {db}, {large} / {small} queued: tasks/s "
                         f"{report.fmt_ratio(r['tasks_per_s_large/small'])}, new_task p50 "
                         f"{report.fmt_ratio(r['new_task_p50_large/small'])} (one pilot "
                         f"alone {report.fmt_ratio(r['solo_new_task_p50_large/small'])})")
        for db, by_size in b["pilot"]["scenarios"].items():
            for queued, f in by_size.items():
                lines.append(f"  pilot cycle {db}, {int(queued):,} queued: "
                             f"{report.fmt(f['tasks_per_s'])} tasks/s, calls/s over echo "
                             f"{report.fmt_ratio(f['ratios']['calls_per_s/echo_calls_per_s'])}")
    for db, r in b.get("count", {}).get("databases", {}).items():
        lines.append(f"  task counts {db}: p50 {report.fmt(r['count']['p50_ms'])} ms, "
                     f"{report.fmt(r['ratios']['count_p50/echo_p50'], 0)}x an echo")
    for db, r in b.get("pages", {}).get("databases", {}).items():
        lines.append(f"  pages {db}, p95 (target {pages.TARGET_P95_MS:.0f} ms): " + ", ".join(
            f"{name} {report.fmt(f['http']['p95_ms'])} ms {pages.verdict(f)}"
            for name, f in r["pages"].items()))
    if "files" in b:
        t = b["files"]["targets"]
        lines.append("  file proxy / direct download MB/s: " + ", ".join(
            f"{name} {report.fmt_ratio(value)}" for name, value in b["files"]["ratios"].items())
            + "; peak server RSS MB " + ", ".join(
            f"{name} {report.fmt(f['peak_rss_mb'])}" for name, f in t.items()))
    if "gridftp" in b:
        lines += gridftp.summary_lines(b["gridftp"])
    if "federation" in b:
        lines += federation.summary_lines(b["federation"])
    if "frontend" in b:
        lines += frontend.summary_lines(b["frontend"])
    return lines


if __name__ == "__main__":
    sys.exit(main())
