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
from pathlib import Path
from typing import Any

from tests.support.datasets import REPO, counts, wait_until
from tests.support.servers import iceprod_server, start_pilot, wait_pilots

NJOBS = 20
EXAMPLE = REPO / "conf" / "examples" / "two_tasks.json"

def example_config(staging: Path) -> dict[str, Any]:
    """conf/examples/two_tasks.json with its files staged under ``staging``."""
    text = EXAMPLE.read_text().replace("file:///tmp/iceprod-examples", f"file://{staging}")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


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

    wait_pilots([start_pilot(srv.url, pilot_key, tmp_path / "pilots", f"node{i}",
                             "--exit-when-idle", "6", "--cpu", "2", "--memory", "2", "--disk",
                             "5", "--time", "1", "--poll-interval", "1", "--heartbeat", "5")
                 for i in range(2)], timeout=240)

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
