"""Benchmark 4: the pages with 1,000,000 tasks: ``/``, ``/dataset/<id>`` and a filtered task
list (and its second page), read anonymously as ``public_read`` (the default) allows.

The database holds the count benchmark's dataset (250,000 jobs of 4 tasks, statuses mixed
as in a dataset well under way) and a few small datasets of other owners, with one attempt
recorded (a ``task_stats`` row, finished over the last two days) for every complete and
every failed task, as a dataset that got there through pilots has: the dataset page shows
runtime statistics and a throughput chart made from those. Everything is bulk-loaded
before the server starts, whose queue depth of 1 keeps the scheduler from changing it.

One client GETs ``/healthz`` (the baseline: an HTTP round trip and one trivial database
read) and every page, one request at a time on one keep-alive connection, in an order
rotated each round so that a burst of background load falls on all of them. Every answer
must be 200 with the expected content. Reported: p50/p95/p99 per page, PASS or FAIL
against 200 ms at p95, the ratio to ``/healthz``, and the page's database work alone (the
page's unit of work run in this process after each round's requests, like the count
benchmark's GROUP BY): the rest of a page's time is its handler and template. For a page
that misses the target, its slowest SQL statements are shown with the database's plan.
"""

from __future__ import annotations

import asyncio
import html
import os
import re
import secrets
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, String, cast, event, insert, literal, select, update

from bench import count, report
from bench.backends import Installation, install
from bench.load import load_dataset, loader_engine
from bench.procs import BenchError, Cleanup, run_cli, start_server
from bench.rpcload import Connection, RPCFailure, Timings
from iceprod_server.db.models import Dataset, Task, TaskStat, User

TARGET_P95_MS = 200.0
OWNERS = ("alice", "bob", "carol")
FILTER_STATUS, FILTER_NAME = "failed", "filter"
SMALL_TASK_NAMES = ["generate", "filter"]
# the small datasets take these in turn: (dataset status, every task's status; None: the mix)
SMALL_KINDS: tuple[tuple[str, str | None], ...] = (
    ("processing", None), ("suspended", "suspended"), ("complete", "complete"))
ATTEMPTS_SPREAD = 48 * 3600  # recorded attempts finished over the last two days
ATTEMPT_BATCH_JOBS = 25_000
SLOWEST_SHOWN = 3
MIN_ROUNDS = 3


@dataclass(frozen=True)
class Settings:
    tasks: int = 1_000_000
    small_datasets: int = 6
    small_jobs: int = 2_500  # of 2 tasks each
    calls: int = 50
    warmup: int = 5
    # warm-up and measuring stop early after this long (but not before one warm-up and
    # MIN_ROUNDS measured rounds), so that a page far off its target does not hold up the
    # run: the figures then come from fewer calls, as the table says
    budget_seconds: float = 180.0


QUICK = Settings(tasks=20_000, small_datasets=3, small_jobs=200, calls=10, warmup=2,
                 budget_seconds=60.0)


@dataclass
class Fixture:
    dataset_id: str
    description: str
    dataset_tasks: int
    total_tasks: int  # in every dataset
    datasets: int
    attempts: int
    load_seconds: float
    filtered_ids: list[str]  # the big dataset's failed FILTER_NAME tasks, first few by id


# --- the fixture ---------------------------------------------------------------------------

def _add_owners(inst: Installation, engine: Engine) -> dict[str, str]:
    """Users made as an operator makes them; returns their ids by name."""
    for name in OWNERS:
        run_cli(["add-user", name, "--password-stdin", "--data-dir", str(inst.data_dir)],
                stdin=secrets.token_urlsafe(16) + "\n")
    with engine.connect() as conn:
        rows = conn.execute(select(User.username, User.user_id)
                            .where(User.username.in_(OWNERS))).all()
    return {name: user_id for name, user_id in rows}


def _load_attempts(engine: Engine, dataset_id: str, njobs: int, label: str) -> int:
    """One finished attempt per complete task and one failed attempt per failed task, set
    based (INSERT ... SELECT from the tasks, a range of jobs per transaction); the triggers
    fill the hourly throughput counters as they do for a pilot's report."""
    now = time.time()
    spread = (Task.job_index * 7919 + Task.task_index * 104729) % ATTEMPTS_SPREAD
    columns = ["task_id", "dataset_id", "attempt", "created", "error", "hostname",
               "time_used", "stats"]
    started = time.monotonic()
    written = 0
    for low in range(0, njobs, ATTEMPT_BATCH_JOBS):
        rows = (select(Task.task_id, Task.dataset_id, literal(1), literal(now) - spread,
                       Task.status == "failed",
                       literal("node") + cast(Task.job_index % 500, String),
                       300 + (Task.job_index * 31 + Task.task_index * 977) % 3300,
                       literal("{}"))
                .where(Task.dataset_id == dataset_id, Task.job_index >= low,
                       Task.job_index < low + ATTEMPT_BATCH_JOBS,
                       Task.status.in_(("complete", "failed"))))
        with engine.begin() as conn:
            written += conn.execute(insert(TaskStat).from_select(columns, rows)).rowcount
        if label:
            print(f"\r    recording attempts of {label}: {written:,} "
                  f"({written / max(time.monotonic() - started, 1e-9):,.0f}/s)", end="",
                  file=sys.stderr, flush=True)
    if label:
        print(f"\r    recorded {written:,} attempts of {label} in "
              f"{time.monotonic() - started:.1f} s{' ' * 20}", file=sys.stderr)
    return written


def _describe(engine: Engine, dataset_id: str, description: str, owner_id: str,
              status: str) -> None:
    with engine.begin() as conn:
        conn.execute(update(Dataset).where(Dataset.dataset_id == dataset_id).values(
            description=description, owner_id=owner_id, status=status))


def _filtered_ids(engine: Engine, dataset_id: str, limit: int) -> list[str]:
    with engine.connect() as conn:
        ids = list(conn.scalars(select(Task.task_id).where(
            Task.dataset_id == dataset_id, Task.status == FILTER_STATUS,
            Task.name == FILTER_NAME).order_by(Task.task_id).limit(limit)))
        conn.rollback()
    return ids


def load_fixture(inst: Installation, s: Settings) -> Fixture:
    started = time.monotonic()
    db = inst.backend
    engine = loader_engine(inst.db_url)
    try:
        owners = _add_owners(inst, engine)
        names = count.TASK_NAMES
        njobs = s.tasks // len(names)
        dataset_id, _ = load_dataset(engine, njobs, names, count.status_of, f"{db} dataset")
        description = (f"Pages benchmark: {njobs * len(names):,} tasks of "
                       f"{', '.join(names)} <IC86.2016 & friends>")
        _describe(engine, dataset_id, description, owners[OWNERS[0]], "processing")
        attempts = _load_attempts(engine, dataset_id, njobs, f"the {db} dataset")
        total = njobs * len(names)
        for i in range(s.small_datasets):
            status, task_status = SMALL_KINDS[i % len(SMALL_KINDS)]
            status_of = count.status_of if task_status is None else (
                lambda _n, t=task_status: t)
            small_id, _ = load_dataset(engine, s.small_jobs, SMALL_TASK_NAMES, status_of,
                                       show_progress=False)
            _describe(engine, small_id, f"small dataset {i + 1} ({status})",
                      owners[OWNERS[(i + 1) % len(OWNERS)]], status)
            attempts += _load_attempts(engine, small_id, s.small_jobs, "")
            total += s.small_jobs * len(SMALL_TASK_NAMES)
        filtered = _filtered_ids(engine, dataset_id, 1000)
        if not filtered:
            raise BenchError(f"{db}: no {FILTER_STATUS} {FILTER_NAME} task was loaded")
    finally:
        engine.dispose()
    return Fixture(dataset_id, description, njobs * len(names), total, 1 + s.small_datasets,
                   attempts, time.monotonic() - started, filtered)


# --- requests --------------------------------------------------------------------------------

class PageConnection(Connection):
    """One keep-alive connection for GETs: the JSON-RPC client's connection and response
    reading, with a GET request head (and an empty body) instead of its POST head."""

    async def get(self, path: str) -> bytes:
        self._head = (f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                      "Accept: text/html\r\nContent-Length: ").encode()
        return await self.post(b"")


Check = Callable[[bytes], str | None]  # what is wrong with a body, or None


def _holding(*needles: str) -> Check:
    """The body must contain every needle (as escaped for HTML)."""
    wanted = [html.escape(n).encode() for n in needles]

    def check(body: bytes) -> str | None:
        missing = [w.decode() for w in wanted if w not in body]
        return f"no {', '.join(repr(m) for m in missing)} in the page" if missing else None

    return check


def _is_json_ok(body: bytes) -> str | None:
    return None if b'"ok"' in body else f"unexpected answer {body[:80]!r}"


def _next_link(body: bytes) -> str | None:
    """The task list's link to its next page (the ``after`` keyset cursor)."""
    text = body.decode("utf-8", "replace")
    for tag in re.findall(r"<a\b[^>]*>", text):
        if 'id="page-next"' in tag:
            found = re.search(r'href="([^"]+)"', tag)
            if found:
                return html.unescape(found.group(1))
    return None


@dataclass
class Target:
    name: str
    path: str
    check: Check
    # the page's database work as a unit of work ``fn(session)``, for the direct timing
    unit: Callable[[Any], Any] | None = None
    problem: str | None = None  # why it is not measured


@dataclass
class _Measured:
    timings: Timings
    direct: dict[str, list[float]] = field(default_factory=dict)
    wrong: dict[str, str] = field(default_factory=dict)  # the first wrong answer per page


def _page_units(f: Fixture, cursor: str | None = None) -> dict[str, Callable[[Any], Any]]:
    """What each page reads, called as its handler calls it. The calls are looked up when
    they run: one that no longer fits the server's code fails then, and the page is
    measured over HTTP only."""
    from iceprod_server import live
    from iceprod_server.db import page_reads

    def tasks(after: str | None) -> Callable[[Any], Any]:
        return lambda s: page_reads.tasks_page(
            s, page_reads.resolve_dataset(s, f.dataset_id), FILTER_STATUS, FILTER_NAME,
            100, after)

    units = {"/": lambda s: live.overview_snapshot(s),
             "/dataset/<id>": lambda s: page_reads.dataset_page(
                 s, page_reads.resolve_dataset(s, f.dataset_id)),
             "tasks": tasks(None)}
    if cursor is not None:
        units["tasks, page 2"] = tasks(cursor)
    return units


def _targets(f: Fixture) -> list[Target]:
    units = _page_units(f)
    dataset = f"/dataset/{f.dataset_id}"
    return [
        Target("/healthz", "/healthz", _is_json_ok),
        Target("/", "/", _holding(f"{f.total_tasks:,}", f.description), units["/"]),
        Target("/dataset/<id>", dataset, _holding(f.description, f"{f.dataset_tasks:,}"),
               units["/dataset/<id>"]),
        Target("tasks", f"{dataset}/tasks?status={FILTER_STATUS}&task_name={FILTER_NAME}",
               _holding(f.filtered_ids[0]), units["tasks"]),
    ]


def _second_page(f: Fixture, first_page: bytes) -> Target:
    """The filtered list's second page, through the first page's ``next`` link."""
    name = "tasks, page 2"
    link = _next_link(first_page)
    if link is None:
        return Target(name, "", _is_json_ok,
                      problem="the first page has no next link (id=page-next)")
    after = re.search(r"[?&]after=([^&]+)", link)
    cursor = urllib.parse.unquote_plus(after.group(1)) if after else ""
    following = [i for i in f.filtered_ids if i > cursor][:1]
    if not following or f.filtered_ids[0] in following:
        return Target(name, link, _is_json_ok,
                      problem=f"cannot tell what the page after {cursor!r} holds")

    def check(body: bytes) -> str | None:
        if f.filtered_ids[0].encode() in body:
            return "the second page repeats the first page's first task"
        return _holding(following[0])(body)

    return Target(name, link, check, _page_units(f, cursor)[name])


async def _get(conn: PageConnection, target: Target) -> tuple[float, str | None]:
    """GET the target: its latency, and what was wrong with the answer."""
    start = time.perf_counter()
    try:
        body = await conn.get(target.path)
    except RPCFailure as e:
        return time.perf_counter() - start, e.message
    return time.perf_counter() - start, target.check(body)


async def _measure(base: str, db_url: str, f: Fixture, s: Settings,
                   targets: list[Target]) -> _Measured:
    from iceprod_server.db.engine import make_engine
    from iceprod_server.executors.database import run_unit

    conn = PageConnection(base)
    engine = make_engine(db_url, pool_size=1)
    m = _Measured(Timings())
    try:
        # a first look at each page: one that fails now is reported, not measured
        for t in list(targets):
            try:
                body = await conn.get(t.path)
            except RPCFailure as e:
                t.problem = e.message
                continue
            t.problem = t.check(body)
            if t.name == "tasks" and t.problem is None:
                targets.append(_second_page(f, body))
        live = [t for t in targets if t.problem is None]
        deadline = time.monotonic() + s.budget_seconds
        warm = rounds = 0
        while rounds < s.calls:
            over = time.monotonic() > deadline
            if over and warm and rounds >= MIN_ROUNDS:
                print(f"    {rounds} rounds measured in the {s.budget_seconds:.0f} s budget",
                      file=sys.stderr)
                break
            # past the budget, the warm-up is cut to one round
            measured = warm >= s.warmup or (over and warm > 0)
            shift = (warm + rounds) % len(live)
            for t in live[shift:] + live[:shift]:
                seconds, wrong = await _get(conn, t)
                if wrong is not None:
                    m.timings.error(t.name)
                    m.wrong.setdefault(t.name, wrong)
                elif measured:
                    m.timings.add(t.name, seconds)
            if not measured:
                warm += 1
                continue
            rounds += 1
            for t in live:
                if t.unit is None:
                    continue
                start = time.perf_counter()
                try:
                    run_unit(engine, t.unit, write=False)
                except Exception as e:  # the server's reads changed shape: HTTP only
                    print(f"    {t.name}: its reads cannot be timed alone: {e}",
                          file=sys.stderr)
                    t.unit = None
                    continue
                m.direct.setdefault(t.name, []).append(time.perf_counter() - start)
    finally:
        await conn.close()
        engine.dispose()
    return m


# --- where a page's time goes ------------------------------------------------------------------

def _explain(conn: Any, dialect: str, statement: str, parameters: Any) -> list[str]:
    if dialect == "sqlite":
        rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
        return [str(r[-1]) for r in rows]
    rows = conn.exec_driver_sql("EXPLAIN " + statement, parameters).mappings().all()
    return [f"{r['table']}: {r['type']} key={r['key']} rows={r['rows']} {r['Extra'] or ''}"
            .rstrip() for r in rows]


def trace(db_url: str, unit: Callable[[Any], Any]) -> list[dict[str, Any]]:
    """Run ``unit`` once, recording its SQL statements; then run each statement again on
    its own, to the last row (SQLite does most of a query's work while the rows are
    fetched), and return a summary and the slowest, each with the database's plan."""
    from iceprod_server.db.engine import make_engine
    from iceprod_server.executors.database import run_unit

    engine = make_engine(db_url, pool_size=1)
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any,
               _many: bool) -> None:
        # the engine's own BEGIN and settings are not the page's work
        if statement.lstrip()[:6].upper() == "SELECT":
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        start = time.perf_counter()
        run_unit(engine, unit, write=False)
        unit_seconds = time.perf_counter() - start
        event.remove(engine, "before_cursor_execute", record)
        timed: list[tuple[float, str, Any]] = []
        with engine.connect() as conn:
            for statement, parameters in seen:
                start = time.perf_counter()
                conn.exec_driver_sql(statement, parameters).all()
                timed.append((time.perf_counter() - start, statement, parameters))
            out: list[dict[str, Any]] = [{
                "statements": len(seen), "unit_ms": 1000 * unit_seconds,
                "sql_ms": 1000 * sum(t[0] for t in timed)}]
            for seconds, statement, parameters in sorted(timed, key=lambda t: t[0],
                                                         reverse=True)[:SLOWEST_SHOWN]:
                try:
                    plan = _explain(conn, engine.dialect.name, statement, parameters)
                except Exception as e:  # a plan is a help, not a requirement
                    plan = [f"(no plan: {e})"]
                out.append({"ms": 1000 * seconds, "sql": " ".join(statement.split()),
                            "parameters": [str(p) for p in (parameters or ())][:8],
                            "plan": plan})
            conn.rollback()
        return out
    finally:
        engine.dispose()


# --- one database, all of them -----------------------------------------------------------------

def _summary(seconds: list[float]) -> dict[str, float]:
    figures = report.latency_summary(seconds)
    figures["p95_ms"] = 1000 * report.percentile(seconds, 95)
    return figures


def run_one(db: str, s: Settings) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    with Cleanup() as cleanup:
        inst = install(cleanup, db, f"pages-{db}")
        f = load_fixture(inst, s)
        _server, base = start_server(cleanup, inst.data_dir, {"ICEPROD_QUEUE_DEPTH": "1"})
        targets = _targets(f)
        print(f"    {db}: {s.calls} rounds of GET /healthz and each page, one at a time",
              flush=True)
        m = asyncio.run(_measure(base, inst.db_url, f, s, targets))
        healthz = _summary(m.timings.latencies.get("/healthz", []))
        pages: dict[str, Any] = {}
        for t in targets[1:]:
            http = _summary(m.timings.latencies.get(t.name, []))
            problem = t.problem or m.wrong.get(t.name)
            fig: dict[str, Any] = {
                "path": t.path, "http": http, "problem": problem,
                "errors": m.timings.errors.get(t.name, 0),
                "db": _summary(m.direct.get(t.name, [])),
                "ratios": {"p50/healthz_p50": report.ratio(http["p50_ms"],
                                                           healthz["p50_ms"]),
                           "p95/healthz_p95": report.ratio(http["p95_ms"],
                                                           healthz["p95_ms"])},
            }
            fig["pass"] = problem is None and http["p95_ms"] < TARGET_P95_MS
            if not fig["pass"] and t.unit is not None and t.problem is None:
                try:
                    fig["slowest_sql"] = trace(inst.db_url, t.unit)
                except Exception as e:  # the figures stand without the diagnosis
                    print(f"    {db} {t.name}: cannot trace its SQL: {e}", file=sys.stderr)
            pages[t.name] = fig
    return {"tasks": f.total_tasks, "datasets": f.datasets, "dataset_tasks": f.dataset_tasks,
        "attempts": f.attempts, "load_seconds": f.load_seconds,
        "load_average": [load_before, os.getloadavg()[0]], "healthz": healthz,
        "pages": pages}


def run_all(dbs: list[str], s: Settings) -> dict[str, Any]:
    result = {"settings": {"tasks": s.tasks, "small_datasets": s.small_datasets,
                           "small_jobs": s.small_jobs, "calls": s.calls, "warmup": s.warmup,
                           "budget_seconds": s.budget_seconds,
                           "target_p95_ms": TARGET_P95_MS,
                           "filter": {"status": FILTER_STATUS, "task_name": FILTER_NAME}},
              "databases": {db: run_one(db, s) for db in dbs}}
    print_result(result)
    return result


def verdict(fig: dict[str, Any]) -> str:
    if fig["problem"]:
        return "FAIL (wrong answer)"
    return "PASS" if fig["pass"] else "FAIL"


def print_result(result: dict[str, Any]) -> None:
    st = result["settings"]
    rows = []
    for db, r in result["databases"].items():
        h = r["healthz"]
        rows.append([f"{db} /healthz", h["n"], h["p50_ms"], h["p95_ms"], h["p99_ms"], "-",
                     "1.0", ""])
        for name, fig in r["pages"].items():
            http = fig["http"]
            rows.append([f"{db} {name}", http["n"], http["p50_ms"], http["p95_ms"],
                         http["p99_ms"],
                         fig["db"]["p50_ms"], report.fmt(fig["ratios"]["p50/healthz_p50"]),
                         verdict(fig)])
    first = next(iter(result["databases"].values()), None)
    size = (f"{first['tasks']:,} tasks in {first['datasets']} datasets, "
            f"{first['attempts']:,} attempts" if first else "")
    print()
    print(report.table(
        f"Pages: {size}; up to {st['calls']} GETs of each, one at a time, alternating (ms)",
        ["page", "GETs", "p50", "p95", "p99", "db p50", "p50/healthz",
         f"p95 < {st['target_p95_ms']:.0f} ms"], rows))
    print(f"  tasks: /dataset/<id>/tasks?status={st['filter']['status']}&task_name="
          f"{st['filter']['task_name']}; page 2 through its next link\n"
          "  db p50: the page's reads alone, run from the benchmark process; the rest of the"
          "\n  page's time is its handler, its template and HTTP")
    for db, r in result["databases"].items():
        for name, fig in r["pages"].items():
            if fig["problem"]:
                print(f"  {db} {name}: {fig['problem']}")
            if "slowest_sql" in fig:
                print_trace(f"{db} {name}", fig)
    print()


def print_trace(label: str, fig: dict[str, Any]) -> None:
    total, *slowest = fig["slowest_sql"]
    print(f"\n  {label} misses {TARGET_P95_MS:.0f} ms at p95 "
          f"({report.fmt(fig['http']['p95_ms'])} ms). Its reads took "
          f"{report.fmt(total['unit_ms'])} ms, of which {total['statements']} SQL statements, "
          f"each run again on its own, {report.fmt(total['sql_ms'])} ms; the slowest:")
    for st in slowest:
        sql = st["sql"] if len(st["sql"]) <= 300 else st["sql"][:297] + "..."
        print(f"    {report.fmt(st['ms'])} ms  {sql}")
        for line in st["plan"]:
            print(f"        plan: {line}")
