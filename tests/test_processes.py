"""``serve --processes N``: N workers on one port, a dying worker replaced, 20 pilots at
once over two workers complete every task exactly once, SIGTERM stops them all gracefully;
SIGHUP applies the options that can change live and names the others."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from tests.support.datasets import config, offer, submit, wait_counts, wait_until
from tests.support.servers import ServerProcess, start_server
from tests.support.workers import paused, wait_workers, workers

PILOTS = 20
NJOBS = 200


class Pilots:
    """PILOTS pilot threads, each on a connection of its own kept alive: they claim and
    finish tasks until the dataset's tasks are all done."""

    def __init__(self, srv: ServerProcess, key: str) -> None:
        self.srv, self.key = srv, key
        self.go = threading.Event()
        self.lock = threading.Lock()
        self.claimed: dict[str, list[str]] = {}  # pilot -> the tasks it was handed
        self.finished = 0
        self.errors: list[BaseException] = []
        self.threads: list[threading.Thread] = []

    def connect(self, names: list[str]) -> None:
        """Start pilots ``names``; returns once each has made its connection."""
        ready = []
        for name in names:
            connected = threading.Event()
            t = threading.Thread(target=self.pilot, args=(name, connected), daemon=True)
            t.start()
            self.threads.append(t)
            ready.append(connected)
        for connected in ready:
            assert connected.wait(30), "a pilot did not connect"
        assert not self.errors, self.errors

    def pilot(self, name: str, connected: threading.Event) -> None:
        try:
            client = self.srv.client(self.key, pilot_ref=name)
            assert client.call("echo", value=name) == name  # opens this thread's connection
            connected.set()
            self.go.wait()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                tasks = client.call("new_task", **offer(cpu=1))
                with self.lock:
                    self.claimed.setdefault(name, []).extend(
                        d["options"]["task_id"] for d in tasks)
                    if not tasks and self.finished >= NJOBS:
                        return
                if not tasks:
                    time.sleep(0.02)
                for desc in tasks:
                    opts = desc["options"]
                    client.call("finish_task", task_id=opts["task_id"],
                                attempt=opts["attempt"], stats={"time_used": 0.1})
                    with self.lock:
                        self.finished += 1
        except BaseException as e:  # shown by the test
            with self.lock:
                self.errors.append(e)
        finally:
            connected.set()

    def run(self) -> None:
        self.go.set()
        for t in self.threads:
            t.join(150)
            assert not t.is_alive(), "a pilot did not finish"


def test_workers_share_the_port_and_are_replaced(server: Any, db_url: str,
                                                 tmp_path: Path) -> None:
    dep = server.deployment(db_url)
    srv = start_server(dep, tmp_path / "logs", extra_args=("--processes", "2"))
    try:
        first = wait_workers(srv.proc.pid, 2)
        user = srv.client(dep.passkey("user", "alice"))
        dataset_id = submit(user, config(), njobs=NJOBS)

        victim = sorted(first)[0]
        os.kill(victim, signal.SIGKILL)

        def replacement() -> set[int] | None:
            now = workers(srv.proc.pid)  # one look: the dead one may be reaped meanwhile
            return now if len(now) == 2 and victim not in now else None

        replaced = wait_until("the dead worker to be replaced", replacement, timeout=30)
        assert len(replaced - first) == 1
        assert "exited with signal SIGKILL; starting a new one" in srv.log_text()

        # the service carries on through both workers at once: half of the pilots connect
        # while one worker is paused (so the other takes their connections), half while
        # the other is, then all work together
        pilots = Pilots(srv, dep.passkey("pilot"))
        names = [f"p{i}" for i in range(PILOTS)]
        halves = {pid: names[i::2] for i, pid in enumerate(sorted(replaced))}
        for pid, half in halves.items():
            with paused(pid):
                pilots.connect(half)
        pilots.run()
        assert not pilots.errors, pilots.errors

        # every task handed out exactly once, among pilots of both workers
        handed = [t for tasks in pilots.claimed.values() for t in tasks]
        assert len(handed) == len(set(handed)) == NJOBS, (len(handed), len(set(handed)))
        for half in halves.values():
            assert sum(len(pilots.claimed.get(n, [])) for n in half) > 0, \
                "the pilots of one worker claimed nothing"
        wait_counts(srv.client(), dataset_id, {"complete": NJOBS})
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
