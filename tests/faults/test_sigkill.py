"""SIGKILL of the server under pilot load, again and again.

Eight pilot threads run tasks (claim, confirm, upload a log, finish) while a submitter adds
datasets, and the server process is killed with SIGKILL four times and started again on
the same port and database. The pilots' clients retry through the gaps. Afterwards:

- every task of every acknowledged submission is complete, with exactly one successful
  attempt (no task ran to completion twice);
- every acknowledged ``finish_task`` is that successful attempt;
- every acknowledged ``upload_logfile`` left its log.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

from iceprod_server.client import IceProdClient, RPCError
from tests.support.datasets import config, offer, task, wait_until
from tests.support.servers import ServerProcess, start_server

KILLS = 4
PILOTS = 8
FIRST_JOBS = 40
ENV = {"ICEPROD_LEASE_SECONDS": "4", "ICEPROD_FIRST_CONTACT_SECONDS": "2",
       "ICEPROD_SCHEDULER_INTERVAL": "0.3"}


def client(srv: ServerProcess, key: str | None, ref: str | None = None) -> IceProdClient:
    return IceProdClient(srv.url, passkey=key, pilot_ref=ref, timeout=10, retries=10,
                         backoff=0.2, max_backoff=2.0)


class Load:
    def __init__(self, srv: ServerProcess, pilot_key: str, user_key: str) -> None:
        self.srv = srv
        self.pilot_key = pilot_key
        self.user_key = user_key
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.finished: set[tuple[str, int]] = set()
        self.logged: set[str] = set()
        self.datasets: list[str] = []
        self.errors: list[str] = []

    def pilot(self, i: int) -> None:
        rpc = client(self.srv, self.pilot_key, f"pilot-{i}")
        while not self.stop.is_set():
            try:
                tasks = rpc.call("new_task", **offer(cpu=1, memory=1, disk=1, time=1))
            except RPCError:
                continue  # the server stayed away longer than the retries: ask again
            if not tasks:
                time.sleep(0.05)
            for desc in tasks:
                opts = desc["options"]
                task_id, attempt = opts["task_id"], opts["attempt"]
                try:
                    rpc.call("stillrunning", task_id=task_id, attempt=attempt)
                    rpc.call("upload_logfile", task=task_id, name="stdout",
                             data=f"log of {task_id} attempt {attempt}\n")
                    with self.lock:
                        self.logged.add(task_id)
                    rpc.call("finish_task", task_id=task_id, attempt=attempt,
                             stats={"time_used": 0.01})
                    with self.lock:
                        self.finished.add((task_id, attempt))
                except RPCError as e:
                    if e.code not in (-32004, -32098, -32099, -32005):
                        with self.lock:
                            self.errors.append(f"{task_id}: {e}")

    def submitter(self) -> None:
        rpc = client(self.srv, self.user_key)
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                dataset_id = rpc.call("submit_dataset", config=config(task("a")),
                                      description=f"chaos {n}", njobs=2)
            except RPCError:
                continue
            with self.lock:
                self.datasets.append(dataset_id)
            self.stop.wait(0.5)


def test_sigkill_under_pilot_load(server: Any, db_url: str, tmp_path: Path) -> None:
    srv: ServerProcess = server(db_url, env=ENV)
    dep = srv.deployment
    load = Load(srv, dep.passkey("pilot"), dep.passkey("user", "alice"))
    first = client(srv, load.user_key).call("submit_dataset", config=config(task("a")),
                                             description="first", njobs=FIRST_JOBS)
    load.datasets.append(first)
    threads = [threading.Thread(target=load.pilot, args=(i,)) for i in range(PILOTS)]
    threads.append(threading.Thread(target=load.submitter))
    for t in threads:
        t.start()
    current = srv
    try:
        for _ in range(KILLS):
            # kill while work is going on: after a few more finishes
            done = len(load.finished)
            wait_until("pilots finishing tasks",
                       lambda done=done: len(load.finished) >= done + 3 or None, timeout=60)
            current.proc.send_signal(signal.SIGKILL)
            current.proc.wait(timeout=10)
            current = start_server(dep, tmp_path / "logs", env=ENV, port=srv.port)
        public = client(current, None)

        def all_complete() -> bool | None:
            with load.lock:
                datasets = list(load.datasets)
            for dataset_id in datasets:
                counts = public.call("public_get_number_of_tasks_in_each_state",
                                     dataset_id=dataset_id)
                if set(counts) != {"complete"}:
                    return None
            return True

        load.stop.set()  # no more submissions; the pilots finish what is there
        for t in threads:
            t.join(timeout=60)
        load.stop.clear()
        runners = [threading.Thread(target=load.pilot, args=(i,)) for i in range(2)]
        for t in runners:
            t.start()
        wait_until("every acknowledged submission complete", all_complete, timeout=120)
        load.stop.set()
        for t in runners:
            t.join(timeout=60)
    finally:
        load.stop.set()
        current.stop()
        srv.stop()
    assert not load.errors, load.errors[:5]

    # every task of every acknowledged submission: exactly one successful attempt
    current = start_server(dep, tmp_path / "logs", env=ENV, port=srv.port)
    try:
        public = client(current, None)
        successful: dict[str, int] = {}
        for dataset_id in load.datasets:
            items = public.call("public_get_tasks", dataset_id=dataset_id,
                                limit=1000)["items"]
            assert items, f"acknowledged dataset {dataset_id} has no tasks"
            for item in items:
                info = public.call("public_get_task", task_id=item["task_id"])
                assert info["status"] == "complete", info
                ok = [a["attempt"] for a in info["attempts"] if not a["error"]]
                assert len(ok) == 1, f"task {item['task_id']} completed {len(ok)} times"
                successful[item["task_id"]] = ok[0]
                if item["task_id"] in load.logged:
                    assert "stdout" in {log["name"] for log in info["logs"]}, info["logs"]
        for task_id, attempt in load.finished:
            if task_id not in successful:
                # a submission whose answer was lost (the server died after its commit and
                # stayed away longer than the client's retries) is not in load.datasets,
                # but its tasks ran: their finishes count the same
                info = public.call("public_get_task", task_id=task_id)
                assert info["status"] == "complete", info
                ok = [a["attempt"] for a in info["attempts"] if not a["error"]]
                assert len(ok) == 1, f"task {task_id} completed {len(ok)} times"
                successful[task_id] = ok[0]
            assert successful[task_id] == attempt, \
                f"acknowledged finish of {task_id} attempt {attempt} is not the one kept"
        print(f"{len(successful)} tasks, {len(load.finished)} acknowledged finishes, "
              f"{len(load.datasets)} datasets, {KILLS} kills")
    finally:
        current.stop()
