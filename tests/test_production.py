"""The production setup end to end: nginx with TLS (deploy/nginx.conf, a throwaway
certificate authority) in front of ``serve --processes 2`` on MariaDB, the reference pilot
and the command line talking HTTPS; and the design document's concurrency demonstration
through nginx with curl."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from iceprod_server.rpc.context import Context
from iceprod_server.rpc.registry import ANYONE
from tests.support.databases import mariadb_database
from tests.support.datasets import REPO, config, submit, wait_counts, wait_until
from tests.support.http import fetch
from tests.support.inprocess import extra_method, in_process_server
from tests.support.nginx import Certs, Nginx, start_nginx
from tests.support.servers import (
    Deployment,
    ServerProcess,
    iceprod_server,
    start_pilot,
    start_server,
    wait_pilots,
)
from tests.support.tls import CertificateAuthority, make_ca

NJOBS = 10


def _one_second_of_blocking_work(session: Session) -> str:
    time.sleep(1.0)
    return "done"


async def one_second_read(ctx: Context) -> str:
    """One second of blocking work on the db pool (registered by this test module only)."""
    result: str = await ctx.services.db.read(_one_second_of_blocking_work)
    return result


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return make_ca(tmp_path / "ca", "IceProd Test")


def https_nginx(directory: Path, ca: CertificateAuthority, upstream: int | list[int]) -> Nginx:
    server = ca.issue("nginx")
    return start_nginx(directory, upstream, certs=Certs(server.cert, server.key, ca.cert),
                       https=True)


@pytest.fixture
def stack(tmp_path: Path, ca: CertificateAuthority,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ServerProcess, Nginx, str]]:
    """MariaDB, ``serve --processes 2`` behind nginx over HTTPS; the HTTPS base URL."""
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.cert))
    with mariadb_database() as url:
        dep = Deployment.init(tmp_path / "data", url)
        srv = start_server(dep, tmp_path / "logs", env={"ICEPROD_TRUSTED_PROXY": "127.0.0.1"},
                           extra_args=("--processes", "2"))
        nginx = https_nginx(tmp_path / "nginx", ca, srv.port)
        try:
            yield srv, nginx, f"https://127.0.0.1:{nginx.port}"
        finally:
            nginx.stop()
            srv.stop()


def test_dataset_through_nginx_over_https_with_two_processes(
        stack: tuple[ServerProcess, Nginx, str], tmp_path: Path, ca: CertificateAuthority) -> None:
    srv, nginx, url = stack
    dep = srv.deployment
    staging = tmp_path / "staging"
    example = (REPO / "conf" / "examples" / "two_tasks.json").read_text()
    config_path = tmp_path / "two_tasks.json"
    config_path.write_text(example.replace("file:///tmp/iceprod-examples", f"file://{staging}"))
    env = {"SSL_CERT_FILE": str(ca.cert)}
    dataset_id = iceprod_server("submit", str(config_path), "--njobs", str(NJOBS), "--url", url,
                                "--passkey", dep.passkey("user", "alice"), env=env).stdout.strip()
    pilot_key = dep.passkey("pilot")
    wait_pilots([start_pilot(url, pilot_key, tmp_path / "pilots", f"node{i}",
                             "--exit-when-idle", "6", "--cpu", "2", "--memory", "2", "--disk",
                             "5", "--time", "1", "--poll-interval", "1", env=env)
                 for i in range(2)], timeout=240)

    from iceprod_server.client import IceProdClient

    client = IceProdClient(url)
    got = client.call("public_get_number_of_tasks_in_each_state", dataset_id=dataset_id)
    assert {k: v for k, v in got.items() if v} == {"complete": 2 * NJOBS}
    for job in range(NJOBS):
        for t in client.call("public_get_tasks", dataset_id=dataset_id, job_index=job)["items"]:
            info = client.call("public_get_task", task_id=t["task_id"])
            assert len(info["attempts"]) == 1, f"{t['name']} of job {job} ran more than once"
            assert {"stdout", "stderr", "stdlog"} <= {log["name"] for log in info["logs"]}
    assert "[error]" not in nginx.error_log(), nginx.error_log()[-3000:]


def test_five_blocking_requests_through_nginx_finish_together(
        tmp_path: Path, sqlite_url: str, ca: CertificateAuthority) -> None:
    dep = Deployment.init(tmp_path / "data", sqlite_url)
    with extra_method("one_second_read", one_second_read, ANYONE), \
            in_process_server(dep.data_dir, {"db_threads": 8}, scheduler=False) as server:
        nginx = https_nginx(tmp_path / "nginx", ca, server.port)
        try:
            body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "one_second_read"})

            def curl() -> tuple[float, Any]:
                started = time.monotonic()
                out = subprocess.run(
                    ["curl", "-sS", "--cacert", str(ca.cert), "-H",
                     "Content-Type: application/json", "--data", body,
                     f"https://127.0.0.1:{nginx.port}/jsonrpc"],
                    capture_output=True, text=True, timeout=30, check=True).stdout
                return time.monotonic() - started, json.loads(out)

            with ThreadPoolExecutor(5) as pool:
                started = time.monotonic()
                results = list(pool.map(lambda _: curl(), range(5)))
                elapsed = time.monotonic() - started
        finally:
            nginx.stop()
    assert all(r == {"jsonrpc": "2.0", "result": "done", "id": 1} for _, r in results), results
    assert all(took >= 0.95 for took, _ in results)
    # five seconds if they ran one after the other; about one together (wide margin)
    assert elapsed < 3.0, f"five one-second requests took {elapsed:.2f} s through nginx"


class PilotLoad:
    """Pilot threads through nginx that claim and finish tasks without retrying anything:
    every error (a 502, a cut answer, a refused call) is recorded, every finish counted."""

    def __init__(self, url: str, key: str, pilots: int, total: int) -> None:
        from iceprod_server.client import IceProdClient

        self.clients = [IceProdClient(url, passkey=key, pilot_ref=f"load-{i}", retries=0,
                                      timeout=60) for i in range(pilots)]
        self.total = total
        self.finished: list[str] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.pilot, args=(c,), daemon=True)
                        for c in self.clients]

    def pilot(self, client: Any) -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.finished) >= self.total or len(self.errors) > 20:
                    return
            try:
                tasks = client.call("new_task", gridspec="", hostname="h", domain="",
                                    ifaces=[], os=None, cpu=1, gpu=0, memory=1.0, disk=1.0,
                                    time=1.0)
                if not tasks:
                    time.sleep(0.05)
                for desc in tasks:
                    opts = desc["options"]
                    client.call("finish_task", task_id=opts["task_id"],
                                attempt=opts["attempt"], stats={"time_used": 0.01})
                    with self.lock:
                        self.finished.append(opts["task_id"])
            except Exception as e:
                with self.lock:
                    self.errors.append(f"{type(e).__name__}: {e}")

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def progress(self) -> int:
        with self.lock:
            return len(self.finished)

    def join(self) -> None:
        for t in self.threads:
            t.join(timeout=300)


def test_rolling_restart_under_50_pilots_loses_nothing(tmp_path: Path) -> None:
    """Two server processes behind nginx; each in turn gets SIGTERM under the load of 50
    pilots and is started again: no pilot sees an error or a cut answer, every task is
    claimed once and completed once."""
    total = 1500
    with mariadb_database() as url:
        dep = Deployment.init(tmp_path / "data", url)
        env = {"ICEPROD_TRUSTED_PROXY": "127.0.0.1"}
        servers = [start_server(dep, tmp_path / "logs", env=env) for _ in range(2)]
        nginx = start_nginx(tmp_path / "nginx", [s.port for s in servers])
        base = f"http://127.0.0.1:{nginx.port}"
        try:
            from iceprod_server.client import IceProdClient

            owner = IceProdClient(base, passkey=dep.passkey("user", "alice"))
            dataset_id = submit(owner, config(), njobs=total)
            load = PilotLoad(base, dep.passkey("pilot"), 50, total)
            load.start()
            for i in range(2):
                done = load.progress()
                wait_until("pilots to make progress",
                           lambda done=done: load.progress() >= done + 100, timeout=120)
                servers[i].proc.send_signal(signal.SIGTERM)
                assert servers[i].proc.wait(60) == 0, servers[i].log_text()[-3000:]
                servers[i] = start_server(dep, tmp_path / "logs", env=env,
                                          port=servers[i].port)
            load.join()
            assert load.errors == [], load.errors[:10]
            assert len(load.finished) == len(set(load.finished)) == total
            # a task claimed twice would show as a second finish (or a -32004 error)
            wait_counts(owner, dataset_id, {"complete": total})
            for s in servers:
                assert "Traceback" not in s.log_text(), s.log_text()[-3000:]
        finally:
            nginx.stop()
            for s in servers:
                s.stop()


def rpc_body(method: str, **params: Any) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})


def test_site_client_certificates_through_nginx(server: Any, sqlite_url: str, tmp_path: Path,
                                                ca: CertificateAuthority) -> None:
    """nginx checks a peer site's certificate against the site CA and passes its DN; the
    server accepts a registered DN, refuses a call without a certificate or with one from
    another authority, and ignores the DN header when it does not come from nginx."""
    srv = server(sqlite_url, env={"ICEPROD_TRUSTED_PROXY": "127.0.0.1"})
    srv.deployment.cli("add-site", "site-a", "--cert-dn", "CN=site-a,O=IceProd Test")
    good = ca.issue("site-a", names=("DNS:site-a.example.org",), usage="clientAuth")
    stranger_ca = make_ca(tmp_path / "other-ca", "Someone Else")
    wrong = stranger_ca.issue("site-a", names=("DNS:site-a.example.org",), usage="clientAuth")
    nginx = https_nginx(tmp_path / "nginx", ca, srv.port)
    url = f"https://127.0.0.1:{nginx.port}/jsonrpc"
    body = rpc_body("master_get_tables", tables=["datasets"])

    def curl(*cert_args: str) -> tuple[int, Any]:
        proc = subprocess.run(
            ["curl", "-sS", "--cacert", str(ca.cert), *cert_args, "-H",
             "Content-Type: application/json", "--data", body, "-w", "\n%{http_code}", url],
            capture_output=True, text=True, timeout=30, check=True)
        text, _, code = proc.stdout.rpartition("\n")
        return int(code), json.loads(text) if text.startswith("{") else text

    try:
        status, answer = curl("--cert", str(good.cert), "--key", str(good.key))
        assert status == 200 and "result" in answer, answer
        assert answer["result"]["datasets"] == [] and "cursor" in answer["result"], answer

        status, answer = curl()  # no certificate: an anonymous caller
        assert status == 200 and answer["error"]["code"] == -32001, answer

        status, answer = curl("--cert", str(wrong.cert), "--key", str(wrong.key))
        # nginx refuses a certificate it cannot verify before the server sees anything
        assert status == 400, (status, answer)
    finally:
        nginx.stop()

    # the same header sent straight to the server from another address is not believed
    forged = fetch(srv.port, "POST", "/jsonrpc", body=body.encode(), source="127.0.0.2",
                   headers={"Content-Type": "application/json",
                            "X-SSL-Client-DN": "CN=site-a,O=IceProd Test",
                            "X-SSL-Client-Verify": "SUCCESS"})
    assert forged.status == 200 and forged.json()["error"]["code"] == -32001, forged.body
