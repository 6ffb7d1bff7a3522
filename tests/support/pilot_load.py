"""A pilot load run as its own process, so that its threads do not share a GIL with the
server under test: ``python -m tests.support.pilot_load URL PASSKEY DATASET_ID TASKS PILOTS``.

Each pilot thread loops new_task / upload_logfile / finish_task until the dataset's
``TASKS`` tasks are complete; the process prints how many tasks it finished.
"""

from __future__ import annotations

import sys
import threading
import time

from iceprod_server.client import IceProdClient
from tests.support.datasets import offer


def run(url: str, passkey: str, dataset_id: str, total: int, pilots: int,
        timeout: float = 120.0) -> int:
    done: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + timeout

    def pilot(i: int) -> None:
        client = IceProdClient(url, passkey=passkey, pilot_ref=f"load-{i}")
        while time.monotonic() < deadline:
            tasks = client.call("new_task", **offer(cpu=1, memory=1, disk=1, time=1))
            if not tasks:
                counts = client.call("public_get_number_of_tasks_in_each_state",
                                     dataset_id=dataset_id)
                if counts == {"complete": total}:
                    return
                time.sleep(0.05)
                continue
            for desc in tasks:
                opts = desc["options"]
                client.call("stillrunning", task_id=opts["task_id"])
                client.call("upload_logfile", task=opts["task_id"], name="stdout",
                            data="hello\n" * 50)
                client.call("finish_task", task_id=opts["task_id"],
                            stats={"time_used": 0.1}, attempt=opts["attempt"])
                with lock:
                    done.append(opts["task_id"])

    threads = [threading.Thread(target=pilot, args=(i,)) for i in range(pilots)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(done)


if __name__ == "__main__":
    url, key, dataset, total, pilots = sys.argv[1:6]
    print(run(url, key, dataset, int(total), int(pilots)))
