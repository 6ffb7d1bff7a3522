"""The server behind real nginx, configured from deploy/nginx.conf (tests/support/nginx.py).

- ``nginx -t`` accepts deploy/nginx.conf (throwaway certificates substituted);
- downloads with Range and ETag pass through; static files come from nginx;
- an upload that nginx buffered to disk is moved into place, not copied (the final file
  is the very inode nginx wrote), with a copy only across filesystems;
- a checksum mismatch, a client that breaks off, or a server that is down leave nothing
  in nginx's directory or in the files directory;
- X-Upload-File is refused from any other address than trusted_proxy (also when the
  client claims to be the proxy in X-Real-IP), outside files_nginx_upload_dir, and
  cannot be smuggled through nginx by a client;
- without trusted_proxy every client of nginx reads /metrics as nginx's loopback address,
  and the server's log says so; with it, the client's own address decides.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import nginx as nginx_support
from tests.support.databases import throwaway_database
from tests.support.datasets import wait_until
from tests.support.http import Reply, fetch, request_head, sha512
from tests.support.nginx import Nginx, start_nginx
from tests.support.servers import Deployment, ServerProcess, start_server, unused_port

MB = 1024 * 1024
# a client address other than the proxy's (all of 127/8 is loopback)
UNTRUSTED = "127.0.0.3"


class Front:
    """A server with nginx in front of it."""

    def __init__(self, srv: ServerProcess, proxy: Nginx, key: str) -> None:
        self.srv = srv
        self.nginx = proxy
        self.key = key

    @property
    def root(self) -> Path:
        return self.srv.data_dir / "files"

    def via_nginx(self, method: str, path: str, body: bytes | None = None,
                  headers: dict[str, str] | None = None) -> Reply:
        return fetch(self.nginx.port, method, path, body, headers, self.key)

    def buffered_files(self) -> list[Path]:
        """Files in nginx's upload directory (it makes one level of subdirectories)."""
        return sorted(p for p in self.nginx.upload_dir.rglob("*") if p.is_file())


@contextlib.contextmanager
def front_for(module_server: Any, directory: Path,
              upload_dir: Path | None = None) -> Iterator[Front]:
    """A server trusting 127.0.0.1, and nginx in front of it buffering uploads to
    ``upload_dir`` (by default the one its config names, under ``directory``)."""
    nginx_dir = directory / "nginx"
    upload_dir = upload_dir or nginx_support.upload_dir(nginx_dir)
    with throwaway_database("sqlite", directory / "db") as url:
        srv = module_server(url, env={"ICEPROD_TRUSTED_PROXY": "127.0.0.1",
                                      "ICEPROD_FILES_NGINX_UPLOAD_DIR": str(upload_dir)})
        proxy = start_nginx(nginx_dir, srv.port, upload_dir)
        try:
            yield Front(srv, proxy, srv.deployment.passkey("pilot"))
        finally:
            proxy.stop()


@pytest.fixture(scope="module")
def front(module_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    with front_for(module_server, tmp_path_factory.mktemp("front")) as result:
        yield result


def test_nginx_accepts_the_deploy_config(tmp_path: Path) -> None:
    certs = nginx_support.make_certs(tmp_path / "certs")
    text = nginx_support.render_for_syntax_check(nginx_support.DEPLOY_CONF.read_text(),
                                                 certs, tmp_path)
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    result = nginx_support.check_syntax(conf, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_a_download_through_nginx_keeps_ranges_and_etags(front: Front) -> None:
    data = os.urandom(3 * MB)
    (front.root / "dl").mkdir(parents=True, exist_ok=True)
    (front.root / "dl/data.bin").write_bytes(data)
    whole = front.via_nginx("GET", "/download/dl/data.bin")
    assert whole.status == 200 and whole.body == data
    assert whole.headers["Content-Length"] == str(len(data))
    part = front.via_nginx("GET", "/download/dl/data.bin", headers={"Range": "bytes=1000-1999"})
    assert part.status == 206
    assert part.body == data[1000:2000]
    assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    cached = front.via_nginx("GET", "/download/dl/data.bin",
                             headers={"If-None-Match": whole.headers["ETag"]})
    assert cached.status == 304
    assert front.via_nginx("GET", "/download/..%2f..%2fetc/passwd").status in (400, 404)


def test_static_files_and_pages_come_through_nginx(front: Front) -> None:
    static = fetch(front.nginx.port, "GET", "/static/iceprod.css")
    assert static.status == 200
    assert static.body == (nginx_support.STATIC_DIR / "iceprod.css").read_bytes()
    assert fetch(front.nginx.port, "GET", "/healthz").status == 200


class Watcher:
    """Notes the inode of every file that appears in nginx's upload directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.inodes: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for root, _, names in os.walk(self.directory):
                for name in names:
                    try:
                        self.inodes.add(os.stat(os.path.join(root, name)).st_ino)
                    except FileNotFoundError:
                        pass
            self._stop.wait(0.005)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def upload_in_two_halves(front: Front, path: str, data: bytes, checksum: str,
                         watcher: Watcher) -> Reply:
    """PUT through nginx; the second half goes only once nginx has its file open."""
    conn = http.client.HTTPConnection("127.0.0.1", front.nginx.port, timeout=60)
    try:
        conn.putrequest("PUT", path)
        for name, value in (("Authorization", f"Bearer {front.key}"),
                            ("Content-Length", str(len(data))),
                            ("X-Checksum", f"sha512={checksum}")):
            conn.putheader(name, value)
        conn.endheaders()
        half = len(data) // 2
        conn.send(data[:half])
        wait_until("nginx to start buffering the body", lambda: watcher.inodes, timeout=15)
        conn.send(data[half:])
        resp = conn.getresponse()
        return Reply(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def test_an_upload_buffered_by_nginx_is_moved_into_place_not_copied(front: Front) -> None:
    data = os.urandom(8 * MB)
    with Watcher(front.nginx.upload_dir) as watcher:
        reply = upload_in_two_halves(front, "/upload/moved/big.bin", data, sha512(data),
                                     watcher)
    assert reply.status == 201, reply.body
    assert reply.json() == {"path": "moved/big.bin", "size": len(data), "sha512": sha512(data)}
    final = front.root / "moved/big.bin"
    assert final.read_bytes() == data
    assert final.stat().st_ino in watcher.inodes, \
        "the stored file should be nginx's buffered file itself, renamed, not a copy"
    assert oct(final.stat().st_mode & 0o777) != oct(0o600), "nginx's private mode is gone"
    assert front.buffered_files() == []
    assert os.listdir(front.root / "moved") == ["big.bin"]
    assert "[crit]" not in front.nginx.error_log(), "nginx should not mind its file moved"


def test_a_chunked_and_an_empty_upload_through_nginx(front: Front) -> None:
    data = os.urandom(MB)
    conn = http.client.HTTPConnection("127.0.0.1", front.nginx.port, timeout=60)
    try:
        conn.request("PUT", "/upload/chunked/c.bin", body=iter([data[:300_000], data[300_000:]]),
                     headers={"Authorization": f"Bearer {front.key}",
                              "X-Checksum": f"sha512={sha512(data)}"}, encode_chunked=True)
        resp = conn.getresponse()
        assert resp.status == 201, resp.read()
    finally:
        conn.close()
    assert (front.root / "chunked/c.bin").read_bytes() == data
    empty = front.via_nginx("PUT", "/upload/chunked/empty", b"")
    assert empty.status == 201, empty.body
    assert (front.root / "chunked/empty").read_bytes() == b""
    assert front.buffered_files() == []


def test_a_checksum_mismatch_through_nginx_leaves_nothing(front: Front) -> None:
    data = os.urandom(2 * MB)
    reply = front.via_nginx("PUT", "/upload/mismatch/x.bin", data,
                            {"X-Checksum": f"sha512={sha512(b'something else')}"})
    assert reply.status == 400
    assert "checksum" in reply.json()["error"]
    assert not (front.root / "mismatch").exists() or os.listdir(front.root / "mismatch") == []
    assert front.buffered_files() == []
    refused = front.via_nginx("PUT", "/upload/mismatch/y.bin", data, {"X-Size": "5"})
    assert refused.status == 400
    denied = fetch(front.nginx.port, "PUT", "/upload/mismatch/z.bin", data)
    assert denied.status == 401
    # refused before the body was looked at: removed as the request ends
    wait_until("the buffered bodies to be removed", lambda: front.buffered_files() == [],
               timeout=10)
    assert not (front.root / "mismatch").exists() or os.listdir(front.root / "mismatch") == []


def test_a_client_that_breaks_off_through_nginx_leaves_nothing(front: Front) -> None:
    with Watcher(front.nginx.upload_dir) as watcher, \
            socket.create_connection(("127.0.0.1", front.nginx.port)) as sock:
        sock.sendall(request_head("PUT", "/upload/broken/x.bin",
                                  {"Content-Length": str(10 * MB)}, front.key))
        sock.sendall(os.urandom(4 * MB))
        wait_until("nginx to start buffering the body", lambda: watcher.inodes, timeout=15)
    wait_until("nginx to remove the partial body", lambda: front.buffered_files() == [],
               timeout=15)
    assert not (front.root / "broken").exists()


def plant(front: Front, name: str, data: bytes = b"someone else's body") -> Path:
    """A file in nginx's upload directory, as if nginx had buffered it for another
    request."""
    front.nginx.upload_dir.mkdir(parents=True, exist_ok=True)
    path = front.nginx.upload_dir / name
    path.write_bytes(data)
    return path


def test_x_upload_file_from_an_untrusted_address_is_refused(front: Front) -> None:
    planted = plant(front, "0000099991")
    for headers in ({"X-Upload-File": str(planted)},
                    {"X-Upload-File": str(planted), "X-Real-IP": "127.0.0.1"}):
        reply = fetch(front.srv.port, "PUT", "/upload/stolen/a.bin", None, headers,
                      front.key, source=UNTRUSTED)
        assert reply.status == 400, reply.body
        assert "trusted proxy" in reply.json()["error"]
    assert planted.read_bytes() == b"someone else's body", "the file must not be touched"
    assert not (front.root / "stolen").exists()
    planted.unlink()


def test_x_upload_file_outside_the_upload_directory_is_refused(front: Front,
                                                               tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"not nginx's")
    link = plant(front, "link")
    link.unlink()
    link.symlink_to(outside)
    for source in (outside, link, front.nginx.upload_dir / ".." / "nginx-upload" / ".." /
                   "outside.bin", Path("relative/path"), front.nginx.upload_dir):
        reply = fetch(front.srv.port, "PUT", "/upload/stolen/b.bin", None,
                      {"X-Upload-File": str(source)}, front.key)
        assert reply.status == 400, (source, reply.body)
        assert "files_nginx_upload_dir" in reply.json()["error"]
    assert outside.read_bytes() == b"not nginx's"
    assert not (front.root / "stolen").exists()
    link.unlink()


def test_a_refused_upload_removes_the_buffered_file(front: Front) -> None:
    """The server removes nginx's file itself whenever it refuses the upload (nginx's
    own removal is a second line, so these go to the server directly)."""
    cases: list[tuple[dict[str, str], str | None, bytes | None, int]] = [
        ({}, None, None, 401),
        ({"X-Checksum": "sha512=" + "0" * 128}, front.key, None, 400),
        ({"X-Checksum": "crc32=00"}, front.key, None, 400),
        ({"X-Upload-Length": "3"}, front.key, None, 400),
        ({}, front.key, b"a body as well", 400),
    ]
    for i, (headers, key, body, status) in enumerate(cases):
        planted = plant(front, f"000009990{i}")
        reply = fetch(front.srv.port, "PUT", "/upload/refused/x.bin", body,
                      {"X-Upload-File": str(planted), **headers}, key)
        assert reply.status == status, (headers, reply.body)
        assert not planted.exists(), "removed before the answer"
    assert not (front.root / "refused").exists() or os.listdir(front.root / "refused") == []


def test_a_client_cannot_smuggle_x_upload_file_through_nginx(front: Front) -> None:
    planted = plant(front, "0000099992")
    for body in (b"the real body", b""):
        reply = front.via_nginx("PUT", "/upload/smuggle/x.bin", body,
                                {"X-Upload-File": str(planted)})
        assert reply.status in (200, 201), reply.body
        assert (front.root / "smuggle/x.bin").read_bytes() == body
    assert planted.read_bytes() == b"someone else's body"
    planted.unlink()


def test_nginx_removes_the_body_when_the_server_is_down(tmp_path: Path) -> None:
    proxy = start_nginx(tmp_path / "nginx", unused_port())
    try:
        reply = fetch(proxy.port, "PUT", "/upload/x.bin", os.urandom(MB), key="any")
        assert reply.status == 502
        # nginx removes it as the request ends, just after the answer has gone out
        wait_until("nginx to remove the body",
                   lambda: [p for p in proxy.upload_dir.rglob("*") if p.is_file()] == [],
                   timeout=10)
    finally:
        proxy.stop()


def test_across_filesystems_the_buffered_body_is_copied_then_removed(
        module_server: Any, tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test's directory")
    other_fs = Path(tempfile.mkdtemp(prefix="iceprod-test-", dir=shm))
    try:
        with front_for(module_server, tmp_path, upload_dir=other_fs / "nginx-upload") as cross:
            data = os.urandom(3 * MB)
            reply = cross.via_nginx("PUT", "/upload/across/x.bin", data,
                                    {"X-Checksum": f"sha512={sha512(data)}"})
            assert reply.status == 201, reply.body
            assert (cross.root / "across/x.bin").read_bytes() == data
            assert os.listdir(cross.root / "across") == ["x.bin"]
            assert cross.buffered_files() == []
    finally:
        shutil.rmtree(other_fs)


def test_the_stored_checksum_matches_what_nginx_received(front: Front) -> None:
    data = os.urandom(5 * MB + 3)
    reply = front.via_nginx("PUT", "/upload/sum/s.bin", data,
                            {"X-Checksum": f"md5={hashlib.md5(data).hexdigest()}"})
    assert reply.status == 201
    assert reply.json()["sha512"] == sha512(data)


def test_metrics_through_nginx_go_by_the_clients_address_only_with_trusted_proxy(
        front: Front, tmp_path: Path) -> None:
    # with trusted_proxy: a client of nginx from an address metrics_allow does not list
    reply = fetch(front.nginx.port, "GET", "/metrics", source=UNTRUSTED)
    assert reply.status == 401, reply.body[:300]
    assert fetch(front.nginx.port, "GET", "/metrics",
                 key=front.srv.deployment.passkey("admin"), source=UNTRUSTED).status == 200
    assert fetch(front.nginx.port, "GET", "/metrics").status == 200  # from 127.0.0.1
    assert "may read /metrics" not in front.srv.log_text()

    # without it: the same client is nginx's 127.0.0.1 to the server, and gets in
    with throwaway_database("sqlite", tmp_path / "db") as url:
        srv = start_server(Deployment.init(tmp_path / "data", url), tmp_path / "logs")
        proxy = start_nginx(tmp_path / "nginx", srv.port)
        try:
            reply = fetch(proxy.port, "GET", "/metrics", source=UNTRUSTED)
            assert reply.status == 200, reply.body[:300]
            assert b"iceprod_tasks" in reply.body
            # ... and the server's log says so, once
            wait_until("the server to warn", lambda: "a front end passed it on (it carries "
                       "X-Real-IP) and trusted_proxy is not set" in srv.log_text(), timeout=5)
            fetch(proxy.port, "GET", "/metrics", source=UNTRUSTED)
            assert srv.log_text().count("may read /metrics") == 1, srv.log_text()[-3000:]
        finally:
            proxy.stop()
            srv.stop()
