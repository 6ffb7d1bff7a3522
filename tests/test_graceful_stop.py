"""SIGTERM lets what is in flight finish: five slow proxied downloads under way when the
signal arrives all arrive whole, nothing new is accepted, and the process exits 0; the same
with ``--processes 2``, where a new connection is refused as soon as both workers have
stopped listening, not queued until the last one exits; with a short ``shutdown_grace`` a
download that outlasts it is cut and the process still ends."""

from __future__ import annotations

import hashlib
import http.client
import signal
import socket
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

from tests.support.datasets import wait_until
from tests.support.servers import start_server
from tests.support.upstream import Upstream

DOWNLOADS = 5
# the upstream's slow mode sends 64 KiB every 20 ms: about 2 s for this size
SIZE = 96 * 64 * 1024


class Download(threading.Thread):
    """GET /proxy of one slow file; records the status, the body's digest and length, and
    when the answer's head arrived."""

    def __init__(self, port: int, key: str, url: str) -> None:
        super().__init__(daemon=True)
        self.port, self.key, self.url = port, key, url
        self.started = threading.Event()
        self.status = 0
        self.length = -1
        self.digest = ""
        self.error: BaseException | None = None

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("GET", "/proxy?" + urllib.parse.urlencode({"url": self.url}),
                         headers={"Authorization": f"Bearer {self.key}"})
            resp = conn.getresponse()
            self.status = resp.status
            first = resp.read(1)
            self.started.set()
            body = first + resp.read()
            self.length = len(body)
            self.digest = hashlib.sha256(body).hexdigest()
        except BaseException as e:  # recorded for the test to show
            self.error = e
        finally:
            self.started.set()
            conn.close()


def start_downloads(srv: Any, up: Upstream) -> list[Download]:
    key = srv.deployment.passkey("pilot")
    downloads = [Download(srv.port, key, up.url("slow", "big.bin")) for _ in range(DOWNLOADS)]
    for d in downloads:
        d.start()
    for d in downloads:
        assert d.started.wait(30), "a download did not start"
        assert d.error is None and d.status == 200, (d.status, d.error)
    return downloads


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_sigterm_lets_downloads_in_flight_finish(server: Any, sqlite_url: str,
                                                 upstream: Upstream) -> None:
    data = upstream.add("big.bin", SIZE)
    srv = server(sqlite_url, env={"ICEPROD_PROXY_ALLOW": f"{upstream.base}/pub/"})
    downloads = start_downloads(srv, upstream)

    srv.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while not refused(srv.port):  # new connections are refused at once
        assert time.monotonic() < deadline, "the server still accepts after SIGTERM"
        time.sleep(0.05)
    assert any(d.is_alive() for d in downloads), "the downloads ended before the check"

    for d in downloads:
        d.join(60)
        assert d.error is None, f"a download was cut off: {d.error!r}"
        assert d.length == len(data), f"got {d.length} of {len(data)} bytes"
        assert d.digest == hashlib.sha256(data).hexdigest()
    assert srv.proc.wait(30) == 0, srv.log_text()[-3000:]
    log = srv.log_text()
    assert "waiting up to 30 s for" in log and "requests in flight finished" in log, log[-3000:]


def test_with_two_workers_new_connections_are_refused_while_downloads_finish(
        server: Any, sqlite_url: str, upstream: Upstream, tmp_path: Path) -> None:
    data = upstream.add("big.bin", SIZE)
    dep = server.deployment(sqlite_url)
    srv = start_server(dep, tmp_path / "logs", env={
        "ICEPROD_PROXY_ALLOW": f"{upstream.base}/pub/"}, extra_args=("--processes", "2"))
    try:
        downloads = start_downloads(srv, upstream)
        srv.proc.send_signal(signal.SIGTERM)
        # each worker logs this once it has closed its copy of the listening socket
        wait_until("both workers to stop listening",
                   lambda: srv.log_text().count("stopping: no new connections") == 2,
                   timeout=10, interval=0.02)
        # the kernel must not take the connection into a queue that nobody reads (its
        # client would wait and then be reset when the last worker exits): refused, so
        # that nginx tries another server at once
        assert refused(srv.port), "a connection made after SIGTERM was accepted"
        assert any(d.is_alive() for d in downloads), "the downloads ended before the check"
        for d in downloads:
            d.join(60)
            assert d.error is None, f"a download was cut off: {d.error!r}"
            assert d.length == len(data), f"got {d.length} of {len(data)} bytes"
            assert d.digest == hashlib.sha256(data).hexdigest()
        assert srv.proc.wait(30) == 0, srv.log_text()[-3000:]
    finally:
        srv.stop()
    assert srv.log_text().count("stopped with 0") == 2, srv.log_text()[-3000:]


def test_a_short_grace_closes_what_is_left_and_exits(server: Any, sqlite_url: str,
                                                    upstream: Upstream) -> None:
    upstream.add("big.bin", SIZE)
    srv = server(sqlite_url, env={"ICEPROD_PROXY_ALLOW": f"{upstream.base}/pub/",
                                  "ICEPROD_SHUTDOWN_GRACE": "0.2"})
    downloads = start_downloads(srv, upstream)
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(30) == 0, srv.log_text()[-3000:]
    for d in downloads:
        d.join(30)
    assert all(d.length < SIZE for d in downloads), "a cut download should be short"
    assert "still in flight after 0.2 s" in srv.log_text()
