"""The production setup end to end: nginx with TLS (deploy/nginx.conf, a throwaway
certificate authority) in front of ``serve --processes 2`` on MariaDB, the reference pilot
and the command line talking HTTPS; and the design document's concurrency demonstration
through nginx with curl."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from iceprod_server.rpc.registry import ANYONE
from tests.support.databases import mariadb_database
from tests.support.datasets import REPO
from tests.support.inprocess import extra_method, in_process_server
from tests.support.nginx import Certs, Nginx, start_nginx
from tests.support.servers import (
    ICEPROD_PILOT,
    Deployment,
    ServerProcess,
    clean_environ,
    iceprod_server,
    start_server,
)
from tests.support.tls import CertificateAuthority, make_ca
from tests.test_concurrency import test_slow_read

NJOBS = 10


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
    pilots = [subprocess.Popen(
        [ICEPROD_PILOT, "--url", url, "--passkey", pilot_key, "--exit-when-idle", "6",
         "--cpu", "2", "--memory", "2", "--disk", "5", "--time", "1", "--poll-interval", "1",
         "--hostname", f"node{i}", "--scratch", str(tmp_path / f"scratch{i}")],
        stdin=subprocess.DEVNULL, stdout=(tmp_path / f"pilot{i}.log").open("wb"),
        stderr=subprocess.STDOUT, env=clean_environ(env)) for i in range(2)]
    for i, proc in enumerate(pilots):
        assert proc.wait(240) == 0, (tmp_path / f"pilot{i}.log").read_text()[-3000:]

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
    with extra_method("test_slow_read", test_slow_read, ANYONE), \
            in_process_server(dep.data_dir, {"db_threads": 8}, scheduler=False) as server:
        nginx = https_nginx(tmp_path / "nginx", ca, server.port)
        try:
            body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "test_slow_read"})

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
