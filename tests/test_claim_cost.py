"""What a claim and a finish cost must not grow with the queue: on MariaDB, a group of 20
claims and their 20 finishes read a bounded number of index entries (the server's own
``Handler_read_*`` counters of the connection), whether 300 or 6,000 tasks are queued.

A join of the claimed tasks with their dataset once let MariaDB start from the dataset
and read every task of it: 6 ms per task with 100,000 queued against 0.5 ms with 1,000.
Counting rows read, not seconds, keeps this test independent of the machine's speed.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from bench.load import load_dataset, loader_engine
from iceprod_server.db.claims import ClaimRequest, claim_batch
from iceprod_server.db.engine import make_engine
from iceprod_server.db.tasks import FinishRequest, Offer, finish_batch
from iceprod_server.executors.database import run_unit
from tests.support import databases
from tests.support.servers import ICEPROD_SERVER

GROUP = 20


def _reads(s: Session) -> int:
    rows = s.execute(text("SHOW SESSION STATUS LIKE 'Handler_read%'")).all()
    return sum(int(value) for _, value in rows)


def _measured(unit: Any) -> Any:
    def run(s: Session, requests: list[Any]) -> tuple[Any, int]:
        before = _reads(s)
        answers = unit(s, requests)
        return answers, _reads(s) - before
    return run


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    with databases.mariadb_database() as url:
        yield url


def reads_per_group(url: str, data_dir: Path, queued: int) -> tuple[int, int]:
    subprocess.run([ICEPROD_SERVER, "init", "--data-dir", str(data_dir), "--db-url", url],
                   check=True, capture_output=True)
    loader = loader_engine(url)
    try:
        load_dataset(loader, queued + 3 * GROUP, ["main"], lambda n: "queued",
                     show_progress=False)
    finally:
        loader.dispose()
    engine = make_engine(url)
    try:
        claim_reads = finish_reads = 0
        for round_ in range(3):
            claimants = [f"pilot-{round_}-{i}" for i in range(GROUP)]
            claimed, reads = run_unit(engine, _measured(claim_batch), [
                ClaimRequest(c, Offer(), 3600.0) for c in claimants])
            claim_reads = max(claim_reads, reads)
            assert all(len(c) == 1 for c in claimed), claimed
            finished, reads = run_unit(engine, _measured(finish_batch), [
                FinishRequest(c[0]["options"]["task_id"], claimant, {"time_used": 1.0})
                for c, claimant in zip(claimed, claimants, strict=True)])
            finish_reads = max(finish_reads, reads)
            assert all(f["repeated"] is False for f in finished), finished
        return claim_reads, finish_reads
    finally:
        engine.dispose()


def test_claims_and_finishes_read_the_same_whatever_the_queue(mariadb_url: str,
                                                              tmp_path: Path) -> None:
    small = reads_per_group(mariadb_url, tmp_path / "small", 300)
    with databases.mariadb_database() as big_url:
        big = reads_per_group(big_url, tmp_path / "big", 6000)
    print(f"index entries read per group of {GROUP}: claims {small[0]} -> {big[0]}, "
          f"finishes {small[1]} -> {big[1]}")
    # a claim reads the fitting tasks it may hand out and what it claimed; a finish reads
    # its tasks: tens of entries per task, never the whole queue
    for kind, few, many in (("claims", small[0], big[0]), ("finishes", small[1], big[1])):
        assert many < 30 * GROUP, f"{kind}: {many} index entries read with 6,000 queued"
        assert many < few + 5 * GROUP, f"{kind}: {few} -> {many} entries read"
