"""IceProd 2.3.2's own integration-test flow, unmodified, against a real server: a client
made with ``JSONRPC(url, passkey=KEY)`` submits configs in IceProd 2's format with
``submit_dataset(cfg, njobs=10, description=desc)``, IceProd 2 pilots work the tasks, and
the client reads the counts positionally with
``public_get_number_of_tasks_in_each_state(dataset_id)`` until every task is complete.

Then the same script with one import changed, to this server's bundled client
(``iceprod_server.client.JSONRPC``).
"""

from __future__ import annotations

import threading
from typing import Any

from iceprod_server.client import JSONRPC as BundledJSONRPC
from iceprod_server.client import IceProdClient, RPCError
from tests.compat.iceprod2 import Iceprod2Error, Iceprod2Pilot
from tests.compat.iceprod2_client import JSONRPC
from tests.compat.iceprod2_configs import iceprod2_config, iceprod2_task
from tests.support.datasets import wait_until
from tests.support.servers import ServerProcess

NJOBS = 10
CONFIGS = {
    "one task": iceprod2_config(iceprod2_task("generate"), description="one task"),
    "a chain": iceprod2_config(
        iceprod2_task("generate", requirements={"memory": 1.5}),
        iceprod2_task("propagate", depends=["generate"]),
        iceprod2_task("detector", depends=["0", "propagate"]), description="a chain"),
}


class Pilots:
    """Two IceProd 2 pilots sharing a key, on two addresses, working until stopped."""

    def __init__(self, srv: ServerProcess) -> None:
        key = srv.deployment.passkey("pilot")
        self.pilots = [Iceprod2Pilot(srv.port, key, source=f"127.0.0.{i}",
                                     hostname=f"node{i}.test.grid") for i in (1, 2)]
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(p,), daemon=True)
                        for p in self.pilots]

    def _run(self, pilot: Iceprod2Pilot) -> None:
        try:
            while not self.stop.is_set():
                got = pilot.new_task()
                if not got:
                    self.stop.wait(0.1)
                    continue
                task_id = got[0]["options"]["task_id"]
                assert pilot.stillrunning(task_id) is True
                pilot.finish_task(task_id)
                pilot.upload_logs(task_id, got[0]["options"]["task"])
        except (Iceprod2Error, AssertionError, OSError) as e:
            self.errors.append(e)

    def __enter__(self) -> Pilots:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)
        assert not self.errors, self.errors


def _flow(srv: ServerProcess, rpc: Any) -> dict[str, str]:
    """IceProd 2.3.2's flow with the client ``rpc``: submit, then read the counts
    positionally until complete. Returns the dataset ids by config name."""
    submitted = {}
    for name, cfg in CONFIGS.items():
        dataset_id = rpc.submit_dataset(cfg, njobs=NJOBS, description=f"2.3.2 flow: {name}")
        assert isinstance(dataset_id, str), dataset_id
        submitted[name] = dataset_id
    with Pilots(srv):
        for name, dataset_id in submitted.items():
            total = NJOBS * len(CONFIGS[name]["tasks"])
            wait_until(f"every task of '{name}' to complete", lambda d=dataset_id, n=total:
                       rpc.public_get_number_of_tasks_in_each_state(d) == {"complete": n},
                       timeout=120)
    for name, dataset_id in submitted.items():
        assert rpc.public_get_dataset_description(dataset_id) == f"2.3.2 flow: {name}"
        assert rpc.public_get_config(dataset_id) == CONFIGS[name]
        assert rpc.public_get_dataset_completion(dataset_id) == 1.0
    wait_until("the datasets to be complete", lambda: set(submitted.values()) <= set(
        rpc.public_get_datasets_by_status("complete")))
    return submitted


def test_the_iceprod2_integration_flow(server: Any, db_url: str) -> None:
    srv: ServerProcess = server(db_url)
    rpc = JSONRPC(srv.rpc_url, passkey=srv.deployment.passkey("user", "alice"))
    submitted = _flow(srv, rpc)
    # what the server shows of the work, through its own client
    chain = srv.client().call("public_get_number_of_tasks_by_name",
                              dataset_id=submitted["a chain"])
    assert chain == {name: {"complete": NJOBS}
                     for name in ("generate", "propagate", "detector")}, chain


def test_the_bundled_client_moves_a_script_by_one_import(server: Any, db_url: str) -> None:
    """``from iceprod_server.client import JSONRPC`` in place of IceProd 2's import: the
    same script runs, and the answers are 2.3.2's (the completion a fraction)."""
    srv: ServerProcess = server(db_url)
    key = srv.deployment.passkey("user", "alice")
    rpc = BundledJSONRPC(srv.rpc_url, passkey=key)
    assert isinstance(rpc, IceProdClient) and rpc.iceprod2
    _flow(srv, rpc)
    # an error is an Exception carrying the server's code and reason, as 2.3.2's
    try:
        rpc.public_get_number_of_tasks_in_each_state("00000000000000000000")
    except Exception as e:  # what a 2.3.2 script catches
        assert isinstance(e, RPCError) and e.code == -32003, e
        assert "no dataset 00000000000000000000" in str(e), e
    else:
        raise AssertionError("an unknown dataset gave no error")
    # the flag on a client made the usual way speaks the same
    flagged = IceProdClient(srv.url, passkey=key, iceprod2=True)
    dataset_id = flagged.submit_dataset(CONFIGS["one task"], "", "flagged", njobs=1)
    assert flagged.public_get_dataset_description(dataset_id) == "flagged"
    assert flagged.public_get_dataset_completion(dataset_id) == 0.0
