"""Downloads (GET /download/PATH) and uploads (PUT /upload/PATH) against a real server.

- downloads: headers, byte ranges, ETag and 304, no compression, paths that try to leave
  the files directory (encoded, absolute, NUL, symlinks), directories;
- uploads: checksums and sizes verified, atomic replacement, nothing left behind by a
  refused, broken off or concurrent upload, the size limit, targets in the way;
- access per directory (passkeys, anonymous, a login session and its XSRF token);
- memory: a 200 MB download and a 200 MB upload do not grow the server's memory, and a
  client that goes away stops the reading.

The database does not matter here beyond passkeys and logins: SQLite only.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import select
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.databases import throwaway_database
from tests.support.datasets import wait_until
from tests.support.http import BrowserSession, Reply, fetch, request_head, sha512
from tests.support.servers import ServerProcess, http_get

ACCESS = "=any;public=anonymous;outputs=pilot,admin"
MB = 1024 * 1024


def entries(directory: Path) -> list[str]:
    return sorted(os.listdir(directory)) if directory.exists() else []


def vm_rss(pid: int) -> int:
    """The resident memory of process ``pid`` in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    assert match, status
    return int(match.group(1)) * 1024


def bytes_read(pid: int) -> int:
    """Bytes the process has read with read()/pread() so far (files and sockets)."""
    io = Path(f"/proc/{pid}/io").read_text()
    match = re.search(r"^rchar:\s+(\d+)", io, re.M)
    assert match, io
    return int(match.group(1))


@dataclass
class Files:
    srv: ServerProcess
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.srv.data_dir / "files"

    @property
    def port(self) -> int:
        return self.srv.port

    def put_file(self, relpath: str, data: bytes) -> Path:
        """A file placed on disk, as an operator (or an earlier upload) would."""
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def get(self, path: str, headers: dict[str, str] | None = None,
            who: str | None = "pilot", method: str = "GET") -> Reply:
        return fetch(self.port, method, path, headers=headers,
                     key=self.keys[who] if who else None)

    def upload(self, relpath: str, data: bytes | Iterable[bytes],
               headers: dict[str, str] | None = None, who: str | None = "pilot",
               checksum: bool = True) -> Reply:
        headers = dict(headers or {})
        if checksum and isinstance(data, bytes):
            headers.setdefault("X-Checksum", f"sha512={sha512(data)}")
        return fetch(self.port, "PUT", "/upload/" + relpath, data, headers,
                     self.keys[who] if who else None)


@pytest.fixture(scope="module")
def files(module_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Files]:
    with throwaway_database("sqlite", tmp_path_factory.mktemp("db")) as url:
        srv = module_server(url, env={"ICEPROD_FILES_ACCESS": ACCESS})
        keys = {role: srv.deployment.passkey(role) for role in ("pilot", "user", "admin")}
        yield Files(srv, keys)


# -- downloads ---------------------------------------------------------------------------

def test_a_download_has_length_type_etag_and_dates(files: Files) -> None:
    data = os.urandom(100_000)
    files.put_file("dl/plain.txt", data)
    reply = files.get("/download/dl/plain.txt")
    assert reply.status == 200
    assert reply.body == data
    assert reply.headers["Content-Length"] == str(len(data))
    assert reply.headers["Content-Type"] == "text/plain"
    assert reply.headers["Accept-Ranges"] == "bytes"
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    assert re.fullmatch(r'"[^"]+"', reply.headers["ETag"]), "the ETag should be strong"
    assert reply.headers["Last-Modified"].endswith(" GMT")

    head = files.get("/download/dl/plain.txt", method="HEAD")
    assert head.status == 200 and head.body == b""
    for name in ("Content-Length", "ETag", "Last-Modified", "Content-Type", "Accept-Ranges"):
        assert head.headers[name] == reply.headers[name], name


@pytest.mark.parametrize(("name", "expected"), [
    ("data.i3.bz2", "application/x-bzip2"),
    ("archive.tar.gz", "application/gzip"),
    ("table.json", "application/json"),
    ("no-extension", "application/octet-stream"),
    ("weird.zzqq", "application/octet-stream"),
])
def test_the_content_type_comes_from_the_extension(files: Files, name: str,
                                                   expected: str) -> None:
    files.put_file("types/" + name, b"x" * 10)
    reply = files.get("/download/types/" + name)
    assert reply.status == 200
    assert reply.headers["Content-Type"] == expected
    assert reply.headers.get("Content-Encoding") is None


def test_a_text_file_is_not_compressed_even_when_the_client_accepts_gzip(files: Files) -> None:
    data = b"hello world\n" * 10_000
    files.put_file("dl/big.txt", data)
    reply = files.get("/download/dl/big.txt", {"Accept-Encoding": "gzip"})
    assert reply.status == 200 and reply.body == data
    assert reply.headers.get("Content-Encoding") is None
    assert reply.headers["Content-Length"] == str(len(data))
    part = files.get("/download/dl/big.txt", {"Accept-Encoding": "gzip", "Range": "bytes=0-4"})
    assert part.status == 206 and part.body == b"hello"


def test_an_uploaded_page_cannot_run_as_part_of_the_site(files: Files) -> None:
    files.put_file("dl/page.html", b"<script>alert(1)</script>")
    reply = files.get("/download/dl/page.html")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "text/html"
    assert "sandbox" in reply.headers["Content-Security-Policy"]
    assert reply.headers["X-Content-Type-Options"] == "nosniff"


RANGE_DATA = bytes(range(256)) * 4  # 1024 bytes


@pytest.mark.parametrize(("header", "start", "end"), [
    ("bytes=0-9", 0, 10),
    ("bytes=100-199", 100, 200),
    ("bytes=1000-", 1000, 1024),
    ("bytes=-24", 1000, 1024),
    ("bytes=1020-5000", 1020, 1024),    # past the end: clamped
    ("bytes=-5000", 0, 1024),           # a suffix longer than the file: all of it
    ("bytes=0-0", 0, 1),
    ("bytes=1023-1023", 1023, 1024),
    ("bytes=0-", 0, 1024),
])
def test_a_single_range_is_206_with_content_range(files: Files, header: str, start: int,
                                                  end: int) -> None:
    files.put_file("ranges/data.bin", RANGE_DATA)
    reply = files.get("/download/ranges/data.bin", {"Range": header})
    assert reply.status == 206, reply.body
    assert reply.body == RANGE_DATA[start:end]
    assert reply.headers["Content-Range"] == f"bytes {start}-{end - 1}/1024"
    assert reply.headers["Content-Length"] == str(end - start)
    head = files.get("/download/ranges/data.bin", {"Range": header}, method="HEAD")
    assert head.status == 206 and head.body == b""
    assert head.headers["Content-Range"] == f"bytes {start}-{end - 1}/1024"


@pytest.mark.parametrize("header", [
    "bytes=1024-", "bytes=5000-6000", "bytes=-0", "bytes=9-3", "bytes=abc", "bytes=-",
    "bytes=1-2-3",
])
def test_an_unsatisfiable_or_malformed_range_is_416(files: Files, header: str) -> None:
    files.put_file("ranges/data.bin", RANGE_DATA)
    reply = files.get("/download/ranges/data.bin", {"Range": header})
    assert reply.status == 416
    assert reply.headers["Content-Range"] == "bytes */1024"


def test_any_range_of_an_empty_file_is_416(files: Files) -> None:
    files.put_file("ranges/empty", b"")
    assert files.get("/download/ranges/empty").status == 200
    for header in ("bytes=0-", "bytes=-1", "bytes=0-0"):
        reply = files.get("/download/ranges/empty", {"Range": header})
        assert reply.status == 416 and reply.headers["Content-Range"] == "bytes */0"


@pytest.mark.parametrize("header", ["bytes=0-1,5-6", "bytes=0-1, 2000-3000", "items=0-5"])
def test_several_ranges_or_another_unit_get_the_whole_file(files: Files, header: str) -> None:
    files.put_file("ranges/data.bin", RANGE_DATA)
    reply = files.get("/download/ranges/data.bin", {"Range": header})
    assert reply.status == 200
    assert reply.body == RANGE_DATA
    assert "Content-Range" not in reply.headers


def test_etag_if_none_match_and_if_range(files: Files) -> None:
    files.put_file("etag/f.bin", b"first version")
    first = files.get("/download/etag/f.bin")
    etag = first.headers["ETag"]
    assert files.get("/download/etag/f.bin").headers["ETag"] == etag, "the ETag is stable"

    for match in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        cached = files.get("/download/etag/f.bin", {"If-None-Match": match})
        assert cached.status == 304, match
        assert cached.body == b""
        assert cached.headers["ETag"] == etag
    assert files.get("/download/etag/f.bin", {"If-None-Match": '"other"'}).status == 200
    since = files.get("/download/etag/f.bin", {"If-Modified-Since": first.headers["Last-Modified"]})
    assert since.status == 304

    partial = files.get("/download/etag/f.bin", {"Range": "bytes=0-4", "If-Range": etag})
    assert partial.status == 206 and partial.body == b"first"

    assert files.upload("etag/f.bin", b"second version!").status == 200
    fresh = files.get("/download/etag/f.bin", {"If-None-Match": etag})
    assert fresh.status == 200 and fresh.body == b"second version!"
    assert fresh.headers["ETag"] != etag
    stale = files.get("/download/etag/f.bin", {"Range": "bytes=0-4", "If-Range": etag})
    assert stale.status == 200 and stale.body == b"second version!", \
        "a range against an old ETag must get the whole new file"


@pytest.mark.parametrize("path", [
    "/download/..%2f..%2fetc/passwd",
    "/download/..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/download/%2e%2e/%2e%2e/etc/passwd",
    "/download/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
    "/download/../../etc/passwd",
    "/download/dl/../../iceprod.db",
    "/download/..%2ficeprod.db",
    "/download/%2fetc%2fpasswd",
    "/download//etc/passwd",
    "/download/dl/plain.txt%00.png",
    "/download/escape/passwd",
    "/download/escape-file",
    "/download/dl",
    "/download/dl/",
    "/download/",
    "/download/missing.txt",
])
def test_paths_outside_the_files_directory_and_directories_are_404(files: Files,
                                                                   path: str) -> None:
    files.put_file("dl/plain.txt", b"inside")
    for link, target in (("escape", "/etc"), ("escape-file", "/etc/passwd")):
        if not (files.root / link).is_symlink():
            (files.root / link).symlink_to(target)
    reply = files.get(path)
    assert reply.status == 404, (path, reply.body[:200])
    assert b"root:" not in reply.body and b"SQLite" not in reply.body


def test_a_symlink_inside_the_files_directory_is_followed(files: Files) -> None:
    files.put_file("linked/real.txt", b"real")
    link = files.root / "linked" / "alias.txt"
    if not link.is_symlink():
        link.symlink_to("real.txt")
    reply = files.get("/download/linked/alias.txt")
    assert reply.status == 200 and reply.body == b"real"


def test_a_fifo_is_not_served(files: Files) -> None:
    fifo = files.root / "fifo"
    files.root.mkdir(parents=True, exist_ok=True)
    if not fifo.exists():
        os.mkfifo(fifo)
    assert files.get("/download/fifo").status == 404


# -- uploads -----------------------------------------------------------------------------

def test_an_upload_is_stored_with_its_checksum_then_replaced(files: Files) -> None:
    data = os.urandom(3 * MB + 17)
    reply = files.upload("up/new/deep/file.bin", data)
    assert reply.status == 201, reply.body
    assert reply.json() == {"path": "up/new/deep/file.bin", "size": len(data),
                            "sha512": sha512(data)}
    assert (files.root / "up/new/deep/file.bin").read_bytes() == data
    assert files.get("/download/up/new/deep/file.bin").body == data

    again = os.urandom(1000)
    replaced = files.upload("up/new/deep/file.bin", again)
    assert replaced.status == 200, replaced.body
    assert replaced.json() == {"path": "up/new/deep/file.bin", "size": 1000,
                               "sha512": sha512(again)}
    assert files.get("/download/up/new/deep/file.bin").body == again
    assert entries(files.root / "up/new/deep") == ["file.bin"]


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha256", "sha512"])
def test_other_checksum_algorithms_are_verified_too(files: Files, algorithm: str) -> None:
    data = os.urandom(5000)
    good = hashlib.new(algorithm, data).hexdigest()
    reply = files.upload(f"algos/{algorithm}", data, {"X-Checksum": f"{algorithm}={good}"})
    assert reply.status == 201, reply.body
    assert reply.json()["sha512"] == sha512(data)
    bad = hashlib.new(algorithm, data + b"!").hexdigest()
    refused = files.upload(f"algos/{algorithm}-bad", data, {"X-Checksum": f"{algorithm}={bad}"})
    assert refused.status == 400
    assert [name for name in entries(files.root / "algos") if algorithm in name] == [algorithm]


def test_an_upload_without_a_checksum_is_stored(files: Files) -> None:
    reply = files.upload("nosum/a.txt", b"abc", checksum=False)
    assert reply.status == 201
    assert reply.json() == {"path": "nosum/a.txt", "size": 3, "sha512": sha512(b"abc")}


def test_an_empty_upload_makes_an_empty_file(files: Files) -> None:
    reply = files.upload("empty/zero", b"")
    assert reply.status == 201 and reply.json()["size"] == 0
    assert (files.root / "empty/zero").read_bytes() == b""


def test_a_wrong_checksum_is_400_and_leaves_nothing(files: Files) -> None:
    data = os.urandom(2 * MB)
    reply = files.upload("bad/sum.bin", data, {"X-Checksum": f"sha512={sha512(b'other')}"})
    assert reply.status == 400
    assert "sha512" in reply.json()["error"]
    assert entries(files.root / "bad") == []

    files.put_file("bad/keep.bin", b"the old content")
    reply = files.upload("bad/keep.bin", data, {"X-Checksum": f"sha512={sha512(b'other')}"})
    assert reply.status == 400
    assert (files.root / "bad/keep.bin").read_bytes() == b"the old content"
    assert entries(files.root / "bad") == ["keep.bin"]


@pytest.mark.parametrize("header", ["crc32=abcd", "sha512", "sha512=xyz", "md5=" + "0" * 31,
                                    "sha-512=" + "0" * 128])
def test_an_unknown_or_malformed_checksum_is_400(files: Files, header: str) -> None:
    reply = files.upload("badsum/x", b"data", {"X-Checksum": header})
    assert reply.status == 400, header
    assert not (files.root / "badsum" / "x").exists()


def test_a_wrong_length_is_400_and_leaves_nothing(files: Files) -> None:
    data = os.urandom(100_000)
    # X-Size against Content-Length: refused before the body is read
    early = files.upload("len/a.bin", data, {"X-Size": str(len(data) + 1)})
    assert early.status == 400
    # a chunked body (no Content-Length) of another size than X-Size
    pieces = [data[i:i + 30_000] for i in range(0, len(data), 30_000)]
    late = files.upload("len/b.bin", iter(pieces), {"X-Size": str(len(data) - 1)})
    assert late.status == 400
    assert "expected" in late.json()["error"]
    assert entries(files.root / "len") == []
    assert files.upload("len/bad", b"x", {"X-Size": "ten"}).status == 400


def test_a_chunked_upload_is_stored(files: Files) -> None:
    data = os.urandom(3 * MB)
    pieces = [data[i:i + 100_000] for i in range(0, len(data), 100_000)]
    reply = files.upload("chunked/c.bin", iter(pieces),
                         {"X-Checksum": f"sha512={sha512(data)}", "X-Size": str(len(data))})
    assert reply.status == 201, reply.body
    assert (files.root / "chunked/c.bin").read_bytes() == data


def send_part_and_hang_up(port: int, relpath: str, key: str, total: int, sent: int,
                          directory: Path) -> None:
    """Start a PUT of ``total`` bytes, send ``sent`` of them, wait until the server is
    writing them, then close the connection."""
    before = set(entries(directory))
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request_head("PUT", f"/upload/{relpath}", {"Content-Length": str(total)},
                                  key))
        sock.sendall(os.urandom(sent))
        wait_until("the server to start a temporary file",
                   lambda: set(entries(directory)) - before, timeout=15)


def test_an_upload_broken_off_leaves_no_file_and_no_temporary_file(files: Files) -> None:
    directory = files.root / "broken"
    directory.mkdir(parents=True, exist_ok=True)
    send_part_and_hang_up(files.port, "broken/new.bin", files.keys["pilot"], 10 * MB,
                          5 * MB, directory)
    wait_until("the temporary file to be removed", lambda: entries(directory) == [],
               timeout=15)

    files.put_file("broken/old.bin", b"old")
    send_part_and_hang_up(files.port, "broken/old.bin", files.keys["pilot"], 10 * MB,
                          3 * MB, directory)
    wait_until("the temporary file to be removed",
               lambda: entries(directory) == ["old.bin"], timeout=15)
    assert (directory / "old.bin").read_bytes() == b"old"
    assert http_get(files.port, "/healthz")[0] == 200


def test_concurrent_uploads_of_one_path_end_with_one_whole_file(files: Files) -> None:
    bodies = [os.urandom(4 * MB) for _ in range(6)]
    statuses: list[int] = []

    def upload(body: bytes) -> None:
        statuses.append(files.upload("race/same.bin", body).status)

    threads = [threading.Thread(target=upload, args=(body,)) for body in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(statuses) == 6 and set(statuses) <= {200, 201} and 201 in statuses, statuses
    final = (files.root / "race/same.bin").read_bytes()
    assert final in bodies, "the file must be exactly one of the uploads, never a mix"
    assert entries(files.root / "race") == ["same.bin"]


def test_a_target_in_the_way_is_409(files: Files) -> None:
    (files.root / "way/dir").mkdir(parents=True, exist_ok=True)
    files.put_file("way/file", b"f")
    assert files.upload("way/dir", b"x").status == 409
    assert files.upload("way/file/below", b"x").status == 409
    assert (files.root / "way/file").read_bytes() == b"f"
    assert entries(files.root / "way/dir") == []


@pytest.mark.parametrize("path", ["..%2fescaped", "%2e%2e/%2e%2e/escaped",
                                  "a/../../escaped", "%2ftmp%2fescaped", "link-out/escaped"])
def test_an_upload_cannot_leave_the_files_directory(files: Files, path: str) -> None:
    files.root.mkdir(parents=True, exist_ok=True)
    outside = files.srv.data_dir / "outside"
    outside.mkdir(exist_ok=True)
    if not (files.root / "link-out").is_symlink():
        (files.root / "link-out").symlink_to(outside)
    reply = fetch(files.port, "PUT", "/upload/" + path, b"x", key=files.keys["pilot"])
    assert reply.status == 404, (path, reply.body)
    assert not (files.srv.data_dir / "escaped").exists()
    assert entries(outside) == []
    assert not Path("/tmp/escaped").exists()


@pytest.mark.parametrize("path", ["/upload/", "/upload/dir/"])
def test_an_upload_must_name_a_file(files: Files, path: str) -> None:
    assert fetch(files.port, "PUT", path, b"x", key=files.keys["pilot"]).status == 400


def test_x_upload_file_is_refused_when_there_is_no_trusted_proxy(files: Files,
                                                                 tmp_path: Path) -> None:
    planted = tmp_path / "planted"
    planted.write_bytes(b"secret")
    reply = fetch(files.port, "PUT", "/upload/stolen", b"",
                  {"X-Upload-File": str(planted)}, files.keys["pilot"])
    assert reply.status == 400
    assert "trusted proxy" in reply.json()["error"]
    assert planted.read_bytes() == b"secret"
    assert not (files.root / "stolen").exists()


# -- the size limit ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def small(module_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Files]:
    with throwaway_database("sqlite", tmp_path_factory.mktemp("db")) as url:
        srv = module_server(url, env={"ICEPROD_FILES_MAX_UPLOAD_BYTES": str(MB)})
        yield Files(srv, {"pilot": srv.deployment.passkey("pilot")})


def test_an_announced_body_over_the_limit_is_413_before_it_is_sent(small: Files) -> None:
    with socket.create_connection(("127.0.0.1", small.port), timeout=10) as sock:
        sock.sendall(request_head("PUT", "/upload/big.bin", {"Content-Length": str(MB + 1)},
                                  small.keys["pilot"]))
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
    assert small.upload("big.bin", b"", {"X-Size": str(MB + 1)}).status == 413
    assert entries(small.root) == []


def test_a_chunked_body_over_the_limit_is_413_and_leaves_nothing(small: Files) -> None:
    piece = b"x" * 64 * 1024
    with socket.create_connection(("127.0.0.1", small.port), timeout=10) as sock:
        sock.sendall(request_head("PUT", "/upload/big.bin", {"Transfer-Encoding": "chunked"},
                                  small.keys["pilot"]))
        # send until the server answers, as a client that watches for an early answer does
        for _ in range(64):
            if select.select([sock], [], [], 0.05)[0]:
                break
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
    assert entries(small.root) == [], "the temporary file is removed before the answer"


def test_a_body_at_the_limit_is_stored(small: Files) -> None:
    data = os.urandom(MB)
    assert small.upload("exact.bin", data).status == 201


# -- access ------------------------------------------------------------------------------

@pytest.mark.parametrize(("who", "path", "expected"), [
    (None, "plain/a.txt", 401),
    ("pilot", "plain/a.txt", 200),
    ("user", "plain/a.txt", 200),
    (None, "public/a.txt", 200),
    ("user", "public/a.txt", 200),
    (None, "outputs/a.txt", 401),
    ("user", "outputs/a.txt", 403),
    ("pilot", "outputs/a.txt", 200),
    ("admin", "outputs/sub/a.txt", 200),
    ("user", "outputs/sub/a.txt", 403),
    ("bad", "plain/a.txt", 401),
    ("bad", "public/a.txt", 401),
])
def test_access_rules_per_directory(files: Files, who: str | None, path: str,
                                    expected: int) -> None:
    files.keys.setdefault("bad", "not-a-passkey")
    files.put_file(path, b"content")
    reply = files.get("/download/" + path, who=who)
    assert reply.status == expected, (who, path, reply.body)
    if expected == 401:
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    target = f"{path}.{who}.up"
    upload = files.upload(target, b"up", who=who)
    assert upload.status == (201 if expected == 200 else expected), (who, path, upload.body)
    assert (files.root / target).exists() == (expected == 200)


def test_a_symlink_does_not_open_a_stricter_directory(files: Files) -> None:
    files.put_file("outputs/secret.txt", b"secret")
    link = files.root / "public" / "secret-link.txt"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to("../outputs/secret.txt")
    assert files.get("/download/public/secret-link.txt", who=None).status == 401
    assert files.get("/download/public/secret-link.txt", who="user").status == 403
    assert files.get("/download/public/secret-link.txt", who="pilot").body == b"secret"


def test_a_login_session_downloads_and_uploads_with_its_xsrf_token(files: Files) -> None:
    files.srv.deployment.add_user("alice")
    browser = BrowserSession(files.port, "alice")
    files.put_file("session/a.txt", b"for alice")
    assert browser.request("GET", "/download/session/a.txt").body == b"for alice"

    refused = browser.request("PUT", "/upload/session/b.txt", b"data")
    assert refused.status == 403
    assert not (files.root / "session/b.txt").exists()
    stored = browser.request("PUT", "/upload/session/b.txt", b"data",
                             {"X-XSRFToken": browser.cookies["_xsrf"]})
    assert stored.status == 201, stored.body
    assert (files.root / "session/b.txt").read_bytes() == b"data"
    assert browser.request("PUT", "/upload/outputs/c.txt", b"data",
                           {"X-XSRFToken": browser.cookies["_xsrf"]}).status == 403


# -- memory ------------------------------------------------------------------------------

def test_a_200_mb_download_does_not_grow_the_server_memory(files: Files) -> None:
    size = 200 * MB
    big = files.root / "big" / "200mb.bin"
    big.parent.mkdir(parents=True, exist_ok=True)
    with big.open("wb") as f:
        f.truncate(size)
    pid = files.srv.proc.pid
    baseline = vm_rss(pid)
    conn = http.client.HTTPConnection("127.0.0.1", files.port, timeout=60)
    try:
        conn.request("GET", "/download/big/200mb.bin",
                     headers={"Authorization": f"Bearer {files.keys['pilot']}"})
        resp = conn.getresponse()
        assert resp.status == 200
        received = len(resp.read(MB))
        # a slow reader: a server that read ahead without waiting for the socket would
        # now pull the whole file into memory
        peak = baseline
        for _ in range(10):
            time.sleep(0.1)
            peak = max(peak, vm_rss(pid))
        while chunk := resp.read(4 * MB):
            received += len(chunk)
            peak = max(peak, vm_rss(pid))
    finally:
        conn.close()
    assert received == size
    assert peak - baseline < 50 * MB, f"server memory grew by {(peak - baseline) // MB} MB"


def test_a_client_that_goes_away_stops_the_download(files: Files) -> None:
    size = 200 * MB
    big = files.root / "big" / "200mb-b.bin"
    big.parent.mkdir(parents=True, exist_ok=True)
    with big.open("wb") as f:
        f.truncate(size)
    pid = files.srv.proc.pid
    before = bytes_read(pid)
    conn = http.client.HTTPConnection("127.0.0.1", files.port, timeout=60)
    conn.request("GET", "/download/big/200mb-b.bin",
                 headers={"Authorization": f"Bearer {files.keys['pilot']}"})
    resp = conn.getresponse()
    assert resp.status == 200 and len(resp.read(5 * MB)) == 5 * MB
    conn.close()

    def settled() -> bool:
        start = bytes_read(pid)
        time.sleep(0.3)
        return bytes_read(pid) - start < 2 * MB

    wait_until("the server to stop reading", settled, timeout=20)
    assert http_get(files.port, "/healthz")[0] == 200
    read = bytes_read(pid) - before
    assert read < 100 * MB, f"the server read {read // MB} MB of a file nobody wanted"


def test_a_200_mb_upload_does_not_grow_the_server_memory(files: Files) -> None:
    block = os.urandom(MB)
    digest = hashlib.sha512()
    for _ in range(200):
        digest.update(block)
    pid = files.srv.proc.pid
    baseline = vm_rss(pid)
    peak = baseline

    def body() -> Iterator[bytes]:
        nonlocal peak
        for i in range(200):
            if i % 10 == 0:
                peak = max(peak, vm_rss(pid))
            yield block

    reply = files.upload("big/up.bin", body(), {"Content-Length": str(200 * MB),
                                                "X-Checksum": f"sha512={digest.hexdigest()}"})
    assert reply.status == 201, reply.body
    assert reply.json()["size"] == 200 * MB
    assert (files.root / "big/up.bin").stat().st_size == 200 * MB
    assert peak - baseline < 50 * MB, f"server memory grew by {(peak - baseline) // MB} MB"
    (files.root / "big/up.bin").unlink()
