"""A full disk under the data directory: small tmpfs mounts on ``files/``, ``cache/`` and
``logs/``. An upload, a proxy cache fill and a large pilot log that do not fit fail with an
answer that says so; nothing half-written stays behind; the server keeps serving, and what
fits is stored.

Mounting needs root (``make test`` runs as root); elsewhere the test fails saying so, unless
``ICEPROD_TEST_SKIP_MOUNT=1`` is set, in which case it is skipped.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support import jsonrpc
from tests.support.datasets import claim_one, config, submit, task, wait_counts
from tests.support.http import fetch
from tests.support.servers import ServerProcess
from tests.support.upstream import Upstream, cache_entries, cache_temps, get

MB = 1024 * 1024


@contextmanager
def small_disk(path: Path, size: int) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        message = f"cannot mount a tmpfs on {path}: {done.stderr.strip()}"
        if os.environ.get("ICEPROD_TEST_SKIP_MOUNT") == "1":
            pytest.skip("ICEPROD_TEST_SKIP_MOUNT=1: " + message)
        pytest.fail(message + " (run as root, or set ICEPROD_TEST_SKIP_MOUNT=1)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def files_in(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def test_full_disk_fails_cleanly(server: Any, sqlite_url: str, upstream: Upstream) -> None:
    dep = server.deployment(sqlite_url)
    with ExitStack() as mounts:
        files = mounts.enter_context(small_disk(dep.data_dir / "files", 4 * MB))
        cache = mounts.enter_context(small_disk(dep.data_dir / "cache", 4 * MB))
        logs = mounts.enter_context(small_disk(dep.data_dir / "logs", 1 * MB))
        srv: ServerProcess = server(sqlite_url, deployment=dep, env={
            "ICEPROD_PROXY_ALLOW": f"{upstream.base}/pub/",
            "ICEPROD_PROXY_CACHE_RESERVE_BYTES": "0",
            "ICEPROD_LOG_INLINE_MAX": "1000"})
        key = dep.passkey("pilot")
        check_uploads(srv, key, files)
        check_cache_fill(srv, key, upstream, cache)
        check_large_logs(srv, dep, key, logs)


def check_uploads(srv: ServerProcess, key: str, files: Path) -> None:
    big = os.urandom(6 * MB)
    answer = fetch(srv.port, "PUT", "/upload/full/big.bin", big, key=key)
    assert answer.status == 507, (answer.status, answer.body[:200])
    assert files_in(files) == [], "a failed upload left a file behind"
    small = os.urandom(100_000)
    assert fetch(srv.port, "PUT", "/upload/full/small.bin", small, key=key).status in (200, 201)
    answer = fetch(srv.port, "GET", "/download/full/small.bin", key=key)
    assert answer.status == 200 and answer.body == small


def check_cache_fill(srv: ServerProcess, key: str, upstream: Upstream, cache: Path) -> None:
    upstream.add("too-big", 6 * MB)
    url = upstream.url("file", "too-big")
    answer = get(srv, key, url, cache="1")
    # the caller gets the whole file (streamed past the cache) or an error: never a
    # truncated file presented as whole
    assert answer.status != 200 or answer.body == upstream.files["too-big"], \
        (answer.status, len(answer.body))
    assert url not in cache_entries(srv) and cache_temps(srv) == []
    upstream.add("fits", 200_000)
    url = upstream.url("file", "fits")
    answer = get(srv, key, url, cache="1")
    assert answer.status == 200 and answer.body == upstream.files["fits"]
    assert url in cache_entries(srv)


def check_large_logs(srv: ServerProcess, dep: Any, key: str, logs: Path) -> None:
    owner = srv.client(dep.passkey("user", "alice"))
    dataset_id = submit(owner, config(task("a")), njobs=1)
    wait_counts(srv.client(), dataset_id, {"queued": 1})
    pilot = srv.client(key, pilot_ref="disk", retries=0)
    task_id = claim_one(pilot)["options"]["task_id"]
    response = jsonrpc.request(srv.rpc_url, "upload_logfile",
                               {"task": task_id, "name": "stdout", "data": "x" * (2 * MB)},
                               passkey=key, headers={"X-IceProd-Pilot": "disk"})
    assert response.get("error", {}).get("code") == -32005, response
    assert files_in(logs) == [], "a failed log left a file behind"
    pilot.call("upload_logfile", task=task_id, name="stdout", data="y" * 5000)
    info = srv.client().call("public_get_task", task_id=task_id)
    assert {log["name"] for log in info["logs"]} == {"stdout"}
    assert info["logs"][0]["tail"].startswith("y")
    assert srv.client().call("echo", value=1) == 1
