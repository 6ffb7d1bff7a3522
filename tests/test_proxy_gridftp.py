"""The caching file proxy with a GridFTP source: ``ftp://`` URLs on a real
globus-gridftp-server, through both GridFTP backends (``library`` and ``url-copy``).

Downloads with and without the cache, size and checksum, a missing file and one outside
the allowed directory; a slow caller keeps the server's memory flat. The HTTP sources
are in test_proxy.py.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.gridftp import GridFTPServer, running_server, served_directory
from tests.support.http import request_head
from tests.support.servers import rss_kib
from tests.support.upstream import cache_entries, post

if TYPE_CHECKING:
    from tests.conftest import ServerFactory

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def ftp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GridFTPServer, Path]]:
    with served_directory("proxy") as folder, \
            running_server(tmp_path_factory.mktemp("gridftp")) as gridftp:
        yield gridftp, folder


@pytest.mark.parametrize("backend", ["library", "url-copy"])
def test_an_ftp_source(server: ServerFactory, sqlite_url: str, backend: str,
                       ftp_server: tuple[GridFTPServer, Path]) -> None:
    gridftp, folder = ftp_server
    data = os.urandom(5 * MiB + 11)
    path = folder / f"{backend}.bin"
    path.write_bytes(data)
    path.chmod(0o644)
    url = gridftp.url(path)
    srv = server(sqlite_url, env={"ICEPROD_PROXY_ALLOW": gridftp.url(folder) + "/",
                                  "ICEPROD_GSIFTP_BACKEND": backend})
    key = srv.deployment.passkey("pilot")
    for cache in (False, True, True):
        answer = post(srv, key, url=url, cache=cache)
        assert answer.status == 200, answer.body[:300]
        assert answer.body == data and answer.headers["Content-Length"] == str(len(data))
    assert cache_entries(srv)[url]["sha512"] == hashlib.sha512(data).hexdigest()
    assert post(srv, key, url=url, type="size").json() == {"url": url, "size": len(data)}
    assert post(srv, key, url=url, type="checksum").json() == {
        "url": url, "checksum": hashlib.sha512(data).hexdigest(), "type": "sha512"}
    missing = post(srv, key, url=gridftp.url(folder / "missing.bin"))
    assert missing.status == 404, missing.body
    outside = post(srv, key, url=gridftp.url(Path("/etc/passwd")))
    assert outside.status == 403


@pytest.mark.parametrize("backend", ["library", "url-copy"])
def test_a_slow_caller_of_an_ftp_source_keeps_memory_flat(
        server: ServerFactory, sqlite_url: str, backend: str,
        ftp_server: tuple[GridFTPServer, Path]) -> None:
    gridftp, folder = ftp_server
    path = folder / f"big-{backend}.bin"
    with path.open("wb") as f:
        block = os.urandom(MiB)
        for _ in range(200):
            f.write(block)
    path.chmod(0o644)
    srv = server(sqlite_url, env={"ICEPROD_PROXY_ALLOW": gridftp.url(folder) + "/",
                                  "ICEPROD_GSIFTP_BACKEND": backend})
    key = srv.deployment.passkey("pilot")
    rss_before = rss_kib(srv.proc.pid)
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        query = urllib.parse.urlencode({"url": gridftp.url(path)})
        sock.sendall(request_head("GET", f"/proxy?{query}", key=key, host="proxy"))
        peak_rss = rss_before
        received = 0
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            received += len(sock.recv(16 * 1024))
            time.sleep(0.01)
            peak_rss = max(peak_rss, rss_kib(srv.proc.pid))
        print(f"ftp flow control ({backend}): the caller took {received / MiB:.1f} MiB, "
              f"server memory +{(peak_rss - rss_before) / 1024:.1f} MiB")
        assert 0 < received < 20 * MiB
        assert (peak_rss - rss_before) * 1024 < 100 * MiB, \
            f"server memory grew by {(peak_rss - rss_before) / 1024:.0f} MiB"
    finally:
        sock.close()
        path.unlink()
    assert post(srv, key, url=gridftp.url(folder / "missing.bin")).status == 404
