"""``serve --processes N``: N workers on one port, a dying worker replaced, SIGTERM stops
them all gracefully; SIGHUP applies the options that can change live and names the others."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from tests.support.datasets import config, submit, wait_counts, wait_until
from tests.support.servers import start_server


def workers(pid: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def test_workers_share_the_port_and_are_replaced(server: Any, db_url: str,
                                                 tmp_path: Path) -> None:
    dep = server.deployment(db_url)
    srv = start_server(dep, tmp_path / "logs", extra_args=("--processes", "2"))
    try:
        def two() -> set[int] | None:
            now = workers(srv.proc.pid)
            return now if len(now) == 2 else None

        first = wait_until("two workers", two)
        user = srv.client(dep.passkey("user", "alice"))
        pilot = srv.client(dep.passkey("pilot"), pilot_ref="p1")
        dataset_id = submit(user, config(), njobs=20)

        victim = sorted(first)[0]
        os.kill(victim, signal.SIGKILL)
        def replacement() -> set[int] | None:
            now = workers(srv.proc.pid)  # one look: the dead one may be reaped meanwhile
            return now if len(now) == 2 and victim not in now else None

        replaced = wait_until("the dead worker to be replaced", replacement, timeout=30)
        assert len(replaced - first) == 1
        assert "exited with signal SIGKILL; starting a new one" in srv.log_text()

        # the service carries on through the workers: every task done exactly once
        done: list[str] = []

        def work() -> bool:
            for desc in pilot.call("new_task", gridspec="", hostname="h", domain="",
                                   ifaces=[], os=None, cpu=4, gpu=0, memory=8.0,
                                   disk=10.0, time=1.0):
                opts = desc["options"]
                pilot.call("finish_task", task_id=opts["task_id"], attempt=opts["attempt"],
                           stats={"time_used": 0.1})
                done.append(opts["task_id"])
            return len(done) >= 20

        wait_until("the pilot to finish every task", work, timeout=60)
        assert len(done) == len(set(done)) == 20
        wait_counts(srv.client(), dataset_id, {"complete": 20})
    finally:
        srv.proc.send_signal(signal.SIGTERM)
        code = srv.proc.wait(60)
    assert code == 0, srv.log_text()[-3000:]
    assert srv.log_text().count("stopped with 0") == 2
    assert not workers(srv.proc.pid)


def test_sighup_applies_live_options_and_names_the_rest(server: Any, sqlite_url: str) -> None:
    srv = server(sqlite_url)
    conf = srv.data_dir / "iceprod.toml"
    # (the test server's log level comes from its environment, which outranks the file)
    conf.write_text(conf.read_text() + "max_resets = 3\npublic_read = false\n"
                    "db_threads = 3\n")
    # before: anonymous reads are open
    assert isinstance(srv.client().call("public_get_datasets_by_status"), dict)
    srv.proc.send_signal(signal.SIGHUP)
    wait_until("the reload to be logged", lambda: "SIGHUP: applied" in srv.log_text())
    log = srv.log_text()
    applied = next(line for line in log.splitlines() if "SIGHUP: applied" in line)
    assert applied.endswith("SIGHUP: applied max_resets, public_read"), applied
    assert "db_threads changed but need a restart" in log
    from iceprod_server.client import RPCError

    try:
        srv.client(retries=0).call("public_get_datasets_by_status")
    except RPCError as e:
        assert e.code == -32001, e
    else:
        raise AssertionError("public_read = false should refuse anonymous reads")

    # a broken file changes nothing and the server keeps serving
    admin = srv.client(srv.deployment.passkey("admin"))
    conf.write_text(conf.read_text() + "this is not toml\n")
    srv.proc.send_signal(signal.SIGHUP)
    wait_until("the refusal to be logged", lambda: "does not load" in srv.log_text())
    assert srv.alive()
    assert isinstance(admin.call("public_get_datasets_by_status"), dict)
    assert "SIGHUP: applied" not in srv.log_text().split("does not load")[-1]
