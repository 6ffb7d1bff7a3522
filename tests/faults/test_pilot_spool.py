"""The reference pilot keeps a task's logs on disk while the server is away longer than its
retries, and sends them when the server is back.

A task waits for a file, the server is stopped, the file appears: the task ends while no
server answers, its log uploads fail after the pilot's retries and go to the spool
directory. A server started again on the same port and database receives them, and the
spool is left empty.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.datasets import config, module, submit, task, wait_counts, wait_until
from tests.support.servers import ICEPROD_PILOT, ServerProcess, clean_environ, start_server

MARK = "output-kept-while-the-server-was-away"


def test_logs_wait_for_the_server(server: Any, db_url: str, tmp_path: Path) -> None:
    srv: ServerProcess = server(db_url, env={"ICEPROD_LEASE_SECONDS": "600"})
    key = srv.deployment.passkey("pilot")
    owner = srv.client(srv.deployment.passkey("user", "alice"))
    go = tmp_path / "go"
    script = tmp_path / "wait_then_print.py"
    script.write_text("import os, sys, time\n"
                      f"while not os.path.exists({str(go)!r}):\n"
                      "    time.sleep(0.1)\n"
                      f"print({MARK!r})\n")
    dataset_id = submit(owner, config(task("a", modules=[module("m", src=str(script),
                                                                   args="")])), njobs=1)
    wait_counts(srv.client(), dataset_id, {"queued": 1})
    task_id = srv.client().call("public_get_tasks", dataset_id=dataset_id)["items"][0]["task_id"]
    spool = tmp_path / "spool"
    pilot_log = tmp_path / "pilot.log"
    with pilot_log.open("wb") as out:
        pilot = subprocess.Popen(
            [ICEPROD_PILOT, "--url", srv.url, "--passkey", key, "--retries", "1",
             "--heartbeat", "1", "--poll-interval", "0.5", "--timeout", "5",
             "--scratch", str(tmp_path / "scratch"), "--log-spool", str(spool),
             "--memory", "1", "--disk", "1"],
            stdout=out, stderr=subprocess.STDOUT, env=clean_environ())
    again: ServerProcess | None = None
    try:
        wait_counts(srv.client(), dataset_id, {"processing": 1})
        srv.stop()
        go.touch()
        wait_until("logs kept in the spool",
                   lambda: len(list(spool.glob("*.json"))) >= 3 or None, timeout=60)
        assert pilot.poll() is None, pilot_log.read_text()[-3000:]

        again = start_server(srv.deployment, tmp_path / "logs", port=srv.port)
        wait_until("the spool emptied", lambda: not list(spool.glob("*")) or None,
                   timeout=60)
        info = again.client().call("public_get_task", task_id=task_id)
        logs = {log["name"]: log for log in info["logs"]}
        assert MARK in logs["stdout"]["tail"], logs
        assert "stdlog" in logs and "stderr" in logs
    finally:
        pilot.terminate()
        try:
            pilot.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pilot.kill()
        if again is not None:
            again.stop()
        print(pilot_log.read_text()[-3000:], file=sys.stderr)
