"""``python -m bench --profile pilot``: a py-spy flame graph of the server under the pilot load.

One server per database with a queue of tasks; ``py-spy record`` samples it (every thread,
named, native frames left out) while the pilots run their cycles, and writes an SVG flame
graph to ``bench/results/profile-pilot-<database>-<time>.svg``. Open it in a browser: the
wider a frame, the more samples were in it.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import pilot, report
from bench.procs import BenchError, Cleanup

PROFILES = ("pilot",)


def _py_spy() -> str:
    found = Path(sys.executable).parent / "py-spy"
    if found.exists():
        return str(found)
    path = shutil.which("py-spy")
    if path is None:
        raise BenchError("py-spy is not installed (pip install -e '.[test]' installs it)")
    return path


def profile_pilot(db: str, s: pilot.Settings) -> dict[str, Any]:
    queued = s.queues[0]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    svg = report.RESULTS_DIR / f"profile-pilot-{db}-{stamp}.svg"
    with Cleanup() as cleanup:
        inst, base, load_seconds, server = pilot._setup(cleanup, db, queued, s)
        server_pid = server.pid
        spy = subprocess.Popen(
            [_py_spy(), "record", "--pid", str(server_pid), "--output", str(svg),
             "--format", "flamegraph", "--rate", "200", "--threads", "--nonblocking"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

        def stop_spy() -> None:
            if spy.poll() is None:
                spy.send_signal(signal.SIGINT)  # py-spy writes the graph on SIGINT
                try:
                    spy.wait(60)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy.wait(5)

        cleanup.push(f"py-spy (pid {spy.pid})", stop_spy)
        scenario = pilot._Scenario(db, queued, inst, base, s, load_seconds)
        print(f"    profiling the server (pid {server_pid}) on {db}, {queued:,} queued: "
              f"{s.pilots} pilots, {s.cycles:,} cycles", flush=True)
        asyncio.run(pilot._measure([scenario], s))
        stop_spy()
        out = spy.stdout.read().decode(errors="replace") if spy.stdout else ""
        if not svg.exists():
            raise BenchError(f"py-spy wrote no flame graph: {out.strip()[-2000:]}")
        fig = scenario.figures()
    print(f"  {db}: {fig['tasks_per_s']:.1f} tasks/s while sampled; flame graph: {svg}")
    return {"svg": str(svg), "tasks_per_s": fig["tasks_per_s"],
            "new_task": fig["new_task"], "finish_task": fig["finish_task"]}


def run(name: str, dbs: list[str], s: pilot.Settings) -> dict[str, Any]:
    if name != "pilot":
        raise BenchError(f"no profile {name!r}; choose from {', '.join(PROFILES)}")
    return {db: profile_pilot(db, s) for db in dbs}
