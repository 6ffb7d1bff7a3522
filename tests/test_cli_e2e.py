"""End to end through the command line, as a new user would do it:

``iceprod-server init`` and ``serve`` (the ``server`` fixture runs exactly those), ``add-user``,
``passkey issue``, ``submit`` of the two-task example (``process`` depends on ``generate``)
with 20 jobs, two ``iceprod-pilot`` processes with ``--exit-when-idle``, then ``status``.

The example's modules print what they did and when; the pilots upload that stdout, so the
dependency order of every job is checked from the logs the server stored.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from tests.support.datasets import REPO, counts, wait_until
from tests.support.servers import ICEPROD_PILOT, clean_environ, iceprod_server

NJOBS = 20
EXAMPLE = REPO / "conf" / "examples" / "two_tasks.json"

_FALLBACK_GENERATE = ("import sys, time; job = int(sys.argv[1]); open(sys.argv[2], 'w')"
                      ".write(''.join(f'{job * 10 + i}\\n' for i in range(10))); "
                      "print(f'generate: job {job} wrote 10 numbers at {time.time():.3f}')")
_FALLBACK_PROCESS = ("import sys, time; total = sum(int(x) for x in open(sys.argv[2])); "
                     "print(f'process: job {sys.argv[1]} sum {total} at {time.time():.3f}')")


def example_config(staging: Path) -> dict[str, Any]:
    """conf/examples/two_tasks.json with its files staged under ``staging``; a config that
    behaves the same when the example is missing."""
    if EXAMPLE.exists():
        text = EXAMPLE.read_text().replace("file:///tmp/iceprod-examples", f"file://{staging}")
        loaded: dict[str, Any] = json.loads(text)
        return loaded
    path = f"{staging}/job-$(job).txt"

    def one(name: str, code: str, depends: list[str]) -> dict[str, Any]:
        module = {"name": name, "src": "python3", "args": ["-c", code, "$(job)", path],
                  "env_shell": "", "env_clear": True}
        return {"name": name, "depends": depends,
                "requirements": {"cpu": 1, "memory": 0.5, "disk": 0.1, "time": 0.1},
                "trays": [{"name": "main", "iterations": 1, "modules": [module]}]}

    return {"version": 3, "description": "two tasks", "options": {}, "tasks": [
        one("generate", _FALLBACK_GENERATE, []), one("process", _FALLBACK_PROCESS,
                                                      ["generate"])]}


def test_submit_run_and_status_from_the_command_line(server: Any, db_url: str,
                                                     tmp_path: Path) -> None:
    srv = server(db_url)
    dep = srv.deployment
    dep.add_user("alice")
    user_key = dep.passkey("user", "alice")
    pilot_key = dep.passkey("pilot")
    staging = tmp_path / "staging"
    staging.mkdir()
    config_path = tmp_path / "two_tasks.json"
    config_path.write_text(json.dumps(example_config(staging)))

    out = iceprod_server("submit", str(config_path), "--njobs", str(NJOBS), "--url", srv.url,
                         "--passkey", user_key).stdout
    dataset_id = out.strip()
    assert re.fullmatch(r"\S+", dataset_id), f"submit printed more than the id: {out!r}"

    pilots = []
    for i in range(2):
        log = (tmp_path / f"pilot{i}.log").open("wb")
        pilots.append((subprocess.Popen(
            [ICEPROD_PILOT, "--url", srv.url, "--passkey", pilot_key, "--exit-when-idle", "6",
             "--cpu", "2", "--memory", "2", "--disk", "5", "--time", "1",
             "--poll-interval", "1", "--heartbeat", "5", "--hostname", f"node{i}",
             "--scratch", str(tmp_path / f"scratch{i}")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=clean_environ()), tmp_path / f"pilot{i}.log"))
    for proc, log_path in pilots:
        try:
            code = proc.wait(timeout=240)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"iceprod-pilot did not exit when idle:\n"
                                 f"{log_path.read_text()[-4000:]}") from None
        assert code == 0, f"iceprod-pilot exited with {code}:\n{log_path.read_text()[-4000:]}"

    client = srv.client()
    assert counts(client, dataset_id) == {"complete": 2 * NJOBS}
    # the dataset's status is derived from its tasks by the scheduler's next pass
    wait_until("the dataset to be complete", lambda: client.call(
        "public_get_datasets_by_status").get("complete") == [dataset_id], timeout=15)

    hosts: set[str] = set()
    for job in range(NJOBS):
        tasks = client.call("public_get_tasks", dataset_id=dataset_id, job_index=job)["items"]
        assert sorted(t["name"] for t in tasks) == ["generate", "process"], tasks
        stdout = {}
        for t in tasks:
            info = client.call("public_get_task", task_id=t["task_id"])
            logs = {log["name"]: log for log in info["logs"]}
            assert {"stdout", "stderr", "stdlog"} <= set(logs), \
                f"job {job} {t['name']}: logs stored: {sorted(logs)}"
            stdout[t["name"]] = logs["stdout"]["tail"] or ""
            hosts.update(a["hostname"] for a in info["attempts"])
        generated = re.search(rf"generate: job {job} wrote 10 numbers at ([0-9.]+)",
                              stdout["generate"])
        processed = re.search(rf"process: job {job} sum (\d+) at ([0-9.]+)", stdout["process"])
        assert generated and processed, f"job {job} stdout tails: {stdout}"
        assert float(generated.group(1)) < float(processed.group(2)), \
            f"job {job}: process ran before generate finished"
        assert int(processed.group(1)) == sum(job * 10 + i for i in range(10)), \
            f"job {job}: process did not read what generate wrote"
    assert hosts == {"node0", "node1"}, f"both pilots should have run tasks: {hosts}"

    table = iceprod_server("status", "--url", srv.url, dataset_id).stdout
    assert re.search(rf"complete\s+{2 * NJOBS}\b", table), table
    overview = iceprod_server("status", "--url", srv.url).stdout
    assert dataset_id in overview and "complete" in overview, overview
