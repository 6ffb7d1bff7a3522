"""``iceprod-server status --watch DATASET`` against a real server while a pilot completes
the dataset: it follows the progress, exits 0 once the dataset is complete, and its last
state shows every bar at 100%. Watching a dataset that does not exist fails at once."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from tests.support.datasets import config, module, submit, task
from tests.support.servers import ICEPROD_PILOT, ICEPROD_SERVER, clean_environ, iceprod_server

NJOBS = 12


def _slow_task(name: str, depends: list[str] | None = None) -> dict[str, Any]:
    # long enough that the watcher sees the dataset unfinished at first
    return task(name, depends=depends,
                requirements={"cpu": 1, "memory": 0.1, "disk": 0.1, "time": 0.1},
                modules=[module(name, args=["-c", "import time; time.sleep(0.3)"])])


def test_watch_follows_a_dataset_to_complete(server: Any, sqlite_url: str,
                                             tmp_path: Path) -> None:
    srv = server(sqlite_url)
    user_key = srv.deployment.passkey("user", "alice")
    pilot_key = srv.deployment.passkey("pilot")
    dataset_id = submit(srv.client(user_key),
                        config(_slow_task("generate"), _slow_task("process", ["generate"])),
                        njobs=NJOBS, description="watched")

    watcher = subprocess.Popen(
        [ICEPROD_SERVER, "status", "--url", srv.url, "--watch", dataset_id,
         "--interval", "0.5"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=clean_environ({"COLUMNS": "160"}))
    pilot_log = (tmp_path / "pilot.log").open("wb")
    pilot = subprocess.Popen(
        [ICEPROD_PILOT, "--url", srv.url, "--passkey", pilot_key, "--exit-when-idle", "5",
         "--cpu", "2", "--memory", "2", "--disk", "5", "--time", "1",
         "--poll-interval", "1", "--heartbeat", "5", "--scratch", str(tmp_path / "scratch")],
        stdin=subprocess.DEVNULL, stdout=pilot_log, stderr=subprocess.STDOUT,
        env=clean_environ())
    try:
        out, err = watcher.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        watcher.kill()
        out, err = watcher.communicate()
        raise AssertionError(f"status --watch did not exit when the dataset completed\n"
                             f"stdout:\n{out}\nstderr:\n{err}") from None
    finally:
        try:
            pilot.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pilot.kill()
        pilot_log.close()

    assert watcher.returncode == 0, f"exit {watcher.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    total = 2 * NJOBS
    for label in ("generate", "process"):
        assert re.search(rf"^{label}\b.*\b{NJOBS}/{NJOBS}\s+100%", out, re.M), out
    assert re.search(rf"^dataset\b.*\b{total}/{total}\s+100%", out, re.M), out
    assert f"dataset {dataset_id} is complete" in out, out


def test_watch_of_an_unknown_dataset_fails_at_once(server: Any, sqlite_url: str) -> None:
    srv = server(sqlite_url)
    proc = iceprod_server("status", "--url", srv.url, "--watch", "nosuchdataset",
                          check=False, timeout=30)
    assert proc.returncode == 1, proc
    assert "-32003" in proc.stderr and "nosuchdataset" in proc.stderr, proc.stderr
