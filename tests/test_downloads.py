"""Downloads (GET /download/PATH) against a real server.

- headers, byte ranges, ETag and 304, no compression, the content type and a sandbox for
  pages;
- paths that try to leave the files directory (encoded, absolute, NUL, symlinks), and
  directories: 404;
- memory: a 200 MB download does not grow the server's memory, and a client that goes
  away stops the reading.

Uploads are in test_uploads.py, the access rules per directory in test_file_access.py.
"""

from __future__ import annotations

import http.client
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.datasets import wait_until
from tests.support.files import ACCESS, MB, Files, serving_files
from tests.support.servers import http_get, rss_kib


def bytes_read(pid: int) -> int:
    """Bytes the process has read with read()/pread() so far (files and sockets)."""
    io = Path(f"/proc/{pid}/io").read_text()
    match = re.search(r"^rchar:\s+(\d+)", io, re.M)
    assert match, io
    return int(match.group(1))


@pytest.fixture(scope="module")
def files(module_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Files]:
    with serving_files(module_server, tmp_path_factory.mktemp("db"),
                       {"ICEPROD_FILES_ACCESS": ACCESS}) as served:
        yield served


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


# -- memory ------------------------------------------------------------------------------

def test_a_200_mb_download_does_not_grow_the_server_memory(files: Files) -> None:
    size = 200 * MB
    big = files.root / "big" / "200mb.bin"
    big.parent.mkdir(parents=True, exist_ok=True)
    with big.open("wb") as f:
        f.truncate(size)
    pid = files.srv.proc.pid
    baseline_kib = rss_kib(pid)
    conn = http.client.HTTPConnection("127.0.0.1", files.port, timeout=60)
    try:
        conn.request("GET", "/download/big/200mb.bin",
                     headers={"Authorization": f"Bearer {files.keys['pilot']}"})
        resp = conn.getresponse()
        assert resp.status == 200
        received = len(resp.read(MB))
        # a slow reader: a server that read ahead without waiting for the socket would
        # now pull the whole file into memory
        peak_kib = baseline_kib
        for _ in range(10):
            time.sleep(0.1)
            peak_kib = max(peak_kib, rss_kib(pid))
        while chunk := resp.read(4 * MB):
            received += len(chunk)
            peak_kib = max(peak_kib, rss_kib(pid))
    finally:
        conn.close()
    assert received == size
    assert (peak_kib - baseline_kib) * 1024 < 50 * MB, \
        f"server memory grew by {(peak_kib - baseline_kib) // 1024} MB"


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
