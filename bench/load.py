"""Bulk loading of a dataset's jobs and tasks straight into the server's database.

Submitting through ``submit_dataset`` would make the scheduler materialise the jobs a batch
at a time; a benchmark needs its queue (or its million tasks) in place before the server
starts. The rows go in batches, one transaction per batch: on SQLite ``executemany`` of
5,000 tasks (and their jobs) at a time; on MariaDB ``LOAD DATA LOCAL INFILE`` of 25,000. The
dataset row says every job is already materialised, so the scheduler makes no more. These
are ordinary INSERTs: whatever the schema's triggers maintain (the task counters) stays
exact.

Task rows are dated two hours back: old enough that a freshly started scheduler, which
re-derives the status of jobs whose tasks changed in the last hour, leaves them alone, and
young enough that no queue timeout (24 hours by default) sends them back to idle.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, insert, select

from iceprod_server.db.ids import new_ids
from iceprod_server.db.models import Dataset, DatasetConfig, Task, TaskDef

BATCH = {"sqlite": 5000, "mariadb": 25000}
AGE = 7200.0
StatusOf = Callable[[int], str]


def dataset_config(task_names: list[str]) -> dict[str, Any]:
    """A dataset config of the shape and size (a few kB) of a real simulation request."""
    parameters: dict[str, Any] = {f"opt::{i}": i * 1.5 for i in range(40)}
    parameters.update({"geometry": "IC86.2016", "nevents": 100, "seed": "$(dataset)",
                       "outfile": "$sprintf('%s.%06d.%06d.i3.zst',$steering(geometry),"
                                  "$(dataset),$(job))"})
    tasks = []
    for i, name in enumerate(task_names):
        tasks.append({
            "name": name,
            "depends": [task_names[i - 1]] if i else [],
            "requirements": {"cpu": 1, "memory": 1.0, "disk": 1.0, "time": 1.0},
            "trays": [{"name": f"{name}-tray", "iterations": 1, "modules": [
                {"name": f"{name}-module", "src": "/bin/true",
                 "args": {"nevents": "$steering(nevents)", "seed": "$steering(seed)",
                          "outputfile": "$steering(outfile)"},
                 "env_shell": "", "env_clear": True}]}],
            "data": [{"remote": "gsiftp://example.org/data/sim/$(dataset)/$steering(outfile)",
                      "local": "$steering(outfile)", "type": "permanent",
                      "movement": "output"}],
            "parameters": {},
        })
    return {"version": 3, "options": {}, "description": "benchmark dataset",
            "steering": {"parameters": parameters, "batchsys": None, "system": {},
                         "resources": [], "data": []},
            "tasks": tasks, "difplus": None}


JOB_COLUMNS = ("job_id", "dataset_id", "job_index", "status", "status_changed")
TASK_COLUMNS = ("task_id", "dataset_id", "job_id", "job_index", "task_index", "name", "status",
                "status_changed", "queue_rank", "attempt", "claim", "claimed_by",
                "lease_expires", "failures", "req_cpu", "req_gpu", "req_memory", "req_disk",
                "req_time", "req_os")
Row = tuple[Any, ...]


class _Writer:
    """Writes a batch of rows for several tables in one transaction: ``executemany`` of
    plain tuples on SQLite; ``LOAD DATA LOCAL INFILE`` on MariaDB, where client-side
    quoting of each value by mysqlclient would cost more than the server's work."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.mariadb = engine.dialect.name != "sqlite"
        self.tmp = tempfile.mkdtemp(prefix="iceprod-bench-load-")

    def write(self, batches: list[tuple[str, tuple[str, ...], list[Row]]]) -> None:
        with self.engine.begin() as conn:
            if self.mariadb:
                conn.exec_driver_sql("SET SESSION unique_checks=0, foreign_key_checks=0")
                for table, columns, rows in batches:
                    self._load_file(conn, table, columns, rows)
                conn.exec_driver_sql("SET SESSION unique_checks=1, foreign_key_checks=1")
            else:
                for table, columns, rows in batches:
                    marks = ", ".join("?" * len(columns))
                    conn.exec_driver_sql(
                        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)

    def _load_file(self, conn: Any, table: str, columns: tuple[str, ...],
                   rows: list[Row]) -> None:
        path = os.path.join(self.tmp, f"{table}.tsv")
        # every value is made here (hex ids, numbers, fixed names): nothing needs escaping
        with open(path, "w") as f:
            f.writelines("\t".join("\\N" if v is None else str(v) for v in row) + "\n"
                         for row in rows)
        conn.exec_driver_sql(f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE {table} "
                             f"({', '.join(columns)})")

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def loader_engine(db_url: str) -> Engine:
    """An engine for bulk loading; MariaDB connections may send local files."""
    from iceprod_server.db.engine import make_engine

    if db_url.startswith("sqlite"):
        engine = make_engine(db_url, pool_size=1)

        @event.listens_for(engine, "connect")
        def _bulk_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # a load that dies half-way is thrown away anyway: no need to wait for the disk
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA synchronous=OFF")
            cur.execute("PRAGMA cache_size=-262144")
            cur.close()

        return engine
    return create_engine(db_url, connect_args={"local_infile": 1, "charset": "utf8mb4"},
                         pool_size=1)


def load_dataset(engine: Engine, njobs: int, task_names: list[str], status_of: StatusOf,
                 label: str = "", show_progress: bool = True) -> tuple[str, float]:
    """Write a processing dataset with ``njobs`` jobs of ``len(task_names)`` tasks each;
    task number ``n`` (job * ntasks + task index) gets status ``status_of(n)``.

    Returns the dataset id and the seconds the load took.
    """
    started = time.monotonic()
    now = time.time()
    changed_at = now - AGE
    ntasks = len(task_names)
    dataset_id = new_ids(1)[0]
    with engine.begin() as conn:
        number = int(conn.scalar(select(func.coalesce(func.max(Dataset.dataset_num), 0)))
                     or 0) + 1
        conn.execute(insert(Dataset).values(
            dataset_id=dataset_id, dataset_num=number, description="benchmark dataset",
            owner_id=None, group_id=None, status="processing", priority=0.0, debug=False,
            njobs=njobs, ntasks=ntasks, jobs_materialized=njobs, gridspec="", stat_keys=[],
            created=changed_at, status_changed=changed_at))
        conn.execute(insert(DatasetConfig).values(
            dataset_id=dataset_id, config=json.dumps(dataset_config(task_names)),
            updated=changed_at))
        conn.execute(insert(TaskDef), [
            {"dataset_id": dataset_id, "task_index": i, "name": name,
             "requirements": {"cpu": 1, "memory": 1.0, "disk": 1.0, "time": 1.0}}
            for i, name in enumerate(task_names)])
    total = njobs * ntasks
    done = 0
    per_batch = max(1, BATCH["sqlite" if engine.dialect.name == "sqlite" else "mariadb"]
                    // ntasks)
    last_shown = 0.0
    lease = now + 86400.0
    writer = _Writer(engine)
    try:
        for start in range(0, njobs, per_batch):
            count = min(per_batch, njobs - start)
            job_ids = new_ids(count)
            task_ids = iter(new_ids(count * ntasks))
            jobs: list[Row] = [(jid, dataset_id, start + i, "processing", changed_at)
                               for i, jid in enumerate(job_ids)]
            tasks: list[Row] = []
            for i, jid in enumerate(job_ids):
                for t, name in enumerate(task_names):
                    status = status_of((start + i) * ntasks + t)
                    if status == "processing":
                        claim: tuple[Any, ...] = (1, secrets.token_hex(16), "bench-loader",
                                                  lease)
                    else:
                        claim = (0, None, None, None)
                    tasks.append((next(task_ids), dataset_id, jid, start + i, t, name, status,
                                  changed_at, 0.0, *claim, int(status == "failed"),
                                  1, 0, 1.0, 1.0, 1.0, None))
            writer.write([("jobs", JOB_COLUMNS, jobs), ("tasks", TASK_COLUMNS, tasks)])
            done += len(tasks)
            if show_progress and (time.monotonic() - last_shown > 1.0 or done == total):
                last_shown = time.monotonic()
                elapsed = last_shown - started
                print(f"\r    loading {label}: {done:,}/{total:,} tasks "
                      f"({done / max(elapsed, 1e-9):,.0f}/s)", end="", file=sys.stderr,
                      flush=True)
    finally:
        writer.close()
    elapsed = time.monotonic() - started
    if show_progress:
        print(f"\r    loaded {label}: {total:,} tasks in {njobs:,} jobs in {elapsed:.1f} s"
              f"{' ' * 20}", file=sys.stderr)
    return dataset_id, elapsed


def count_by_status(engine: Engine, dataset_id: str) -> dict[str, int]:
    """A dataset's tasks by status, counted with a GROUP BY over the tasks table."""
    with engine.connect() as conn:
        conn = conn.execution_options(iceprod_write=False)
        rows = conn.execute(select(Task.status, func.count()).where(
            Task.dataset_id == dataset_id).group_by(Task.status)).all()
        conn.rollback()
    return {status: int(n) for status, n in rows}
