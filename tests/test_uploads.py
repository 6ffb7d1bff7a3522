"""Uploads (PUT /upload/PATH) against a real server.

- checksums (every algorithm) and sizes verified, an upload replaces a file atomically;
- nothing left behind by a refused, broken off or concurrent upload;
- targets in the way, paths that try to leave the files directory, X-Upload-File without
  a trusted proxy;
- the size limit, announced or found out while a chunked body arrives;
- memory: a 200 MB upload does not grow the server's memory.

Downloads are in test_downloads.py, the access rules per directory in test_file_access.py.
"""

from __future__ import annotations

import hashlib
import os
import select
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.datasets import wait_until
from tests.support.files import ACCESS, MB, Files, entries, serving_files
from tests.support.http import fetch, request_head, sha512
from tests.support.servers import http_get, rss_kib


@pytest.fixture(scope="module")
def files(module_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Files]:
    with serving_files(module_server, tmp_path_factory.mktemp("db"),
                       {"ICEPROD_FILES_ACCESS": ACCESS}) as served:
        yield served


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
    with serving_files(module_server, tmp_path_factory.mktemp("db"),
                       {"ICEPROD_FILES_MAX_UPLOAD_BYTES": str(MB)}, roles=("pilot",)) as served:
        yield served


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


# -- memory ------------------------------------------------------------------------------

def test_a_200_mb_upload_does_not_grow_the_server_memory(files: Files) -> None:
    block = os.urandom(MB)
    digest = hashlib.sha512()
    for _ in range(200):
        digest.update(block)
    pid = files.srv.proc.pid
    baseline_kib = rss_kib(pid)
    peak_kib = baseline_kib

    def body() -> Iterator[bytes]:
        nonlocal peak_kib
        for i in range(200):
            if i % 10 == 0:
                peak_kib = max(peak_kib, rss_kib(pid))
            yield block

    reply = files.upload("big/up.bin", body(), {"Content-Length": str(200 * MB),
                                                "X-Checksum": f"sha512={digest.hexdigest()}"})
    assert reply.status == 201, reply.body
    assert reply.json()["size"] == 200 * MB
    assert (files.root / "big/up.bin").stat().st_size == 200 * MB
    assert (peak_kib - baseline_kib) * 1024 < 50 * MB, \
        f"server memory grew by {(peak_kib - baseline_kib) // 1024} MB"
    (files.root / "big/up.bin").unlink()
