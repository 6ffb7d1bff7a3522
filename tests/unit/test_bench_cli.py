"""``python -m bench``: every benchmark it lists can be chosen, and its help names them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_every_benchmark_can_be_chosen() -> None:
    from bench import __main__ as bench_main

    for name in bench_main.BENCHMARKS:
        assert bench_main.parse_args(["--only", name]).only == [name]
    with pytest.raises(SystemExit):
        bench_main.parse_args(["--only", "nonsense"])


def test_help_lists_the_benchmarks() -> None:
    done = subprocess.run([sys.executable, "-m", "bench", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    for name in ("echo", "pilot", "count", "pages", "files", "gridftp", "federation",
                 "frontend"):
        assert name in done.stdout
