"""What an IceProd 2.3 pilot sends, request by request, written out from its wire format.

IceProd 2.3 pilots post JSON-RPC 2.0 to ``<url>/jsonrpc`` with ``Content-Type:
application/json-rpc``, put the passkey among the named params, send no
``Authorization`` or ``X-IceProd-Pilot`` header, report ``update_pilot`` tasks as one
comma-separated string, and upload logs zlib-compressed and base64-encoded. Pilots of one
submission share a passkey; :class:`Iceprod2Pilot` can send from another loopback address
so that two of them look like two hosts.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import zlib
from typing import Any

RESOURCE_KEYS = {"cpu", "gpu", "memory", "disk", "time"}
_ids = itertools.count(1)


class Iceprod2Error(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('code')}: {error.get('message')} {error.get('data')}")
        self.code = int(error["code"])
        self.data = error.get("data")


class Iceprod2Pilot:
    def __init__(self, port: int, passkey: str, source: str = "127.0.0.1",
                 hostname: str = "node1.test.grid") -> None:
        self.port = port
        self.passkey = passkey
        self.source = source
        self.hostname = hostname

    def request(self, method: str, **params: Any) -> dict[str, Any]:
        """One request as IceProd 2.3's ``jsonRPCclient`` sends it; the whole answer."""
        body = json.dumps({"jsonrpc": "2.0", "method": method,
                           "params": {**params, "passkey": self.passkey},
                           "id": next(_ids)}).encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30,
                                          source_address=(self.source, 0))
        try:
            conn.request("POST", "/jsonrpc", body,
                         {"Content-Type": "application/json-rpc"})
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        assert resp.status == 200, (resp.status, data[:300])
        answer: dict[str, Any] = json.loads(data)
        return answer

    def call(self, method: str, **params: Any) -> Any:
        answer = self.request(method, **params)
        if "error" in answer:
            raise Iceprod2Error(answer["error"])
        return answer["result"]

    # -- the calls of pilot mode, with the params IceProd 2.3 sends

    def new_task(self, cpu: int = 1, gpu: int = 0, memory: float = 2.0, disk: float = 5.0,
                 time: float = 1.0) -> list[dict[str, Any]]:
        got = self.call("new_task", gridspec="test.grid", hostname=self.hostname,
                        domain="test.grid",
                        ifaces={"lo": {"ipv4": self.source, "mac": "00:00:00:00:00:00"},
                                "eth0": {"ipv4": "10.1.2.3", "mac": "02:42:0a:01:02:03"}},
                        os=None, cpu=cpu, gpu=gpu, memory=memory, disk=disk, time=time)
        assert isinstance(got, list), got
        return got

    def update_pilot(self, pilot_id: str, task_ids: list[str]) -> Any:
        free = {"cpu": 1 - len(task_ids), "gpu": 0, "memory": 2.0, "disk": 5.0, "time": 1.0}
        return self.call("update_pilot", pilot_id=pilot_id, tasks=",".join(task_ids),
                         resources_available=free,
                         resources_claimed={"cpu": len(task_ids), "gpu": 0,
                                            "memory": 0.5, "disk": 0.1, "time": 0.2})

    def stillrunning(self, task_id: str) -> Any:
        return self.call("stillrunning", task_id=task_id)

    def finish_task(self, task_id: str) -> Any:
        return self.call("finish_task", task_id=task_id, stats={
            "hostname": self.hostname, "domain": "test.grid", "time_used": 12.0,
            "resources": {"cpu": 0.9, "gpu": 0, "memory": 0.4, "disk": 0.05, "time": 0.01}})

    def task_error(self, task_id: str, reason: str) -> Any:
        return self.call("task_error", task_id=task_id, error_info={
            "hostname": self.hostname, "domain": "test.grid", "time_used": 3.0,
            "error_summary": reason,
            "resources": {"cpu": 0.5, "gpu": 0, "memory": 0.2, "disk": 0.01, "time": 0.001}})

    def upload_logfile(self, task_id: str, name: str, text: str) -> Any:
        packed = base64.b64encode(zlib.compress(text.encode())).decode()
        return self.call("upload_logfile", task=task_id, name=name, data=packed)

    def upload_logs(self, task_id: str, prefix: str) -> None:
        """stdout, stderr and stdlog, as the runner uploads them in its ``finally``."""
        for name in ("stdout", "stderr", "stdlog"):
            self.upload_logfile(task_id, name, f"{prefix} {name} line 1\n{prefix} {name} end\n")
