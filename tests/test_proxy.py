"""The caching file proxy, ``POST /download`` and ``GET /proxy``, against real server
processes and a real upstream: a small Tornado server in a thread of the test process that
serves files, counts requests, and can be slow, break off mid-way, hang and redirect."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import socket
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tornado.web

from tests.conftest import ServerFactory
from tests.support.databases import throwaway_database
from tests.support.gridftp import GridFTPServer, running_server, served_directory
from tests.support.http import Reply, fetch, request_head
from tests.support.servers import ServerProcess, unused_port

MiB = 1024 * 1024
CHUNK = 64 * 1024


# -- the upstream ----------------------------------------------------------------------------

class Upstream:
    """Files served from memory under ``/pub/<mode>/<name>`` (and ``/secret/<name>``,
    which is not in the proxy's allow list); ``hits`` counts requests by method and path,
    ``sent`` the bytes of ``/pub/big/...`` answers that the socket has taken."""

    def __init__(self) -> None:
        self.port = unused_port()
        self.files: dict[str, bytes] = {}
        self.hits: Counter[tuple[str, str]] = Counter()
        self.sent: Counter[str] = Counter()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, mode: str, name: str = "") -> str:
        return f"{self.base}/pub/{mode}/{name}" if name else f"{self.base}/pub/{mode}"

    def add(self, name: str, size: int) -> bytes:
        data = os.urandom(size)
        self.files[name] = data
        return data

    def gets(self, url: str) -> int:
        return self.hits["GET", urllib.parse.urlsplit(url).path]

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10), "the upstream did not start"

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _main(self) -> None:
        app = tornado.web.Application([
            (r"/pub/(file|slow|broken|chunked)/(.+)", FileHandler),
            (r"/pub/big/(\d+)", BigHandler),
            (r"/pub/hang", HangHandler),
            (r"/pub/error", ErrorHandler),
            (r"/pub/redirect", RedirectHandler),
            (r"/secret/(.+)", SecretHandler),
        ], upstream=self)
        server = app.listen(self.port, address="127.0.0.1")
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        server.stop()


class UpstreamHandler(tornado.web.RequestHandler):
    @property
    def up(self) -> Upstream:
        up: Upstream = self.settings["upstream"]
        return up

    def prepare(self) -> None:
        self.up.hits[self.request.method or "", self.request.path] += 1


class FileHandler(UpstreamHandler):
    def head(self, mode: str, name: str) -> None:
        if name not in self.up.files:
            raise tornado.web.HTTPError(404)
        self.set_header("Content-Length", len(self.up.files[name]))

    async def get(self, mode: str, name: str) -> None:
        data = self.up.files.get(name)
        if data is None:
            raise tornado.web.HTTPError(404)
        self.set_header("Content-Type", "application/octet-stream")
        if mode != "chunked":
            self.set_header("Content-Length", len(data))
        for start in range(0, len(data), CHUNK):
            if mode == "broken" and start >= len(data) // 2:
                self.request.connection.close()  # type: ignore[union-attr]
                return
            self.write(data[start:start + CHUNK])
            await self.flush()
            if mode == "slow":
                await asyncio.sleep(0.02)


class BigHandler(UpstreamHandler):
    async def get(self, size_text: str) -> None:
        size = int(size_text)
        block = bytes(range(256)) * 1024
        self.set_header("Content-Length", size)
        sent = 0
        while sent < size:
            piece = block[:size - sent]
            self.write(piece)
            await self.flush()
            sent += len(piece)
            self.up.sent[self.request.path] = sent


class HangHandler(UpstreamHandler):
    async def get(self) -> None:
        await asyncio.sleep(30)


class ErrorHandler(UpstreamHandler):
    def get(self) -> None:
        raise tornado.web.HTTPError(500)


class RedirectHandler(UpstreamHandler):
    def get(self) -> None:
        self.redirect(self.get_query_argument("to"))


class SecretHandler(UpstreamHandler):
    def get(self, name: str) -> None:
        self.write(b"secret")


# -- calling the proxy -----------------------------------------------------------------------

def call(srv: ServerProcess, method: str, path: str, body: bytes | None = None,
         key: str | None = None, content_type: str = "application/json") -> Reply:
    headers = {"Content-Type": content_type} if body is not None else {}
    return fetch(srv.port, method, path, body, headers, key)


def post(srv: ServerProcess, key: str | None, **fields: Any) -> Reply:
    return call(srv, "POST", "/download", json.dumps(fields).encode(), key)


def get(srv: ServerProcess, key: str | None, url: str, **params: str) -> Reply:
    query = urllib.parse.urlencode({"url": url, **params})
    return call(srv, "GET", f"/proxy?{query}", key=key)


def cache_entries(srv: ServerProcess) -> dict[str, dict[str, Any]]:
    """The cache's metadata files, by URL, once no fill is in progress: a caller has its
    last byte a moment before the fill it came from is renamed into place."""
    deadline = time.monotonic() + 10
    while cache_temps(srv) and time.monotonic() < deadline:
        time.sleep(0.01)
    found = {}
    for meta in (srv.data_dir / "cache" / "entries").glob("*/*/meta.json"):
        info = json.loads(meta.read_text())
        found[info["url"]] = info
    return found


def cache_temps(srv: ServerProcess) -> list[str]:
    tmp = srv.data_dir / "cache" / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


# -- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    up.start()
    yield up
    up.stop()


@dataclass
class Proxy:
    srv: ServerProcess
    pilot: str


def proxy_env(up: Upstream, **extra: str) -> dict[str, str]:
    return {"ICEPROD_PROXY_ALLOW": f"{up.base}/pub/", **extra}


@pytest.fixture(scope="module")
def proxy(module_server: ServerFactory, upstream: Upstream,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    with throwaway_database("sqlite", tmp_path_factory.mktemp("db")) as db_url:
        srv = module_server(db_url, env=proxy_env(upstream))
        yield Proxy(srv, srv.deployment.passkey("pilot"))


# -- downloads -------------------------------------------------------------------------------

def test_post_json_post_form_and_get_give_the_same_bytes(proxy: Proxy,
                                                          upstream: Upstream) -> None:
    data = upstream.add("forms.bin", 3 * MiB + 17)
    url = upstream.url("file", "forms.bin")
    by_json = post(proxy.srv, proxy.pilot, url=url, type="download")
    form = urllib.parse.urlencode({"url": url, "type": "download"}).encode()
    by_form = call(proxy.srv, "POST", "/download", form, proxy.pilot,
                   "application/x-www-form-urlencoded")
    by_get = get(proxy.srv, proxy.pilot, url)
    for answer in (by_json, by_form, by_get):
        assert answer.status == 200, answer.body[:300]
        assert answer.body == data
        assert answer.headers["Content-Type"] == "application/octet-stream"
        assert answer.headers["Content-Length"] == str(len(data))
    assert upstream.gets(url) == 3, "without cache every download goes to the source"
    assert url not in cache_entries(proxy.srv)


def test_a_source_without_content_length_streams_chunked(proxy: Proxy,
                                                         upstream: Upstream) -> None:
    data = upstream.add("chunked.bin", MiB + 5)
    for cache in ("0", "1"):
        answer = get(proxy.srv, proxy.pilot, upstream.url("chunked", "chunked.bin"),
                     cache=cache)
        assert answer.status == 200 and answer.body == data
        assert answer.headers["Content-Length"] is None


def test_size_and_checksum(proxy: Proxy, upstream: Upstream) -> None:
    data = upstream.add("sums.bin", 777_777)
    url = upstream.url("file", "sums.bin")
    size = post(proxy.srv, proxy.pilot, url=url, type="size")
    assert size.status == 200 and size.json() == {"url": url, "size": len(data)}
    checksum = post(proxy.srv, proxy.pilot, url=url, type="checksum")
    assert checksum.status == 200
    assert checksum.json() == {"url": url, "checksum": hashlib.sha512(data).hexdigest(),
                               "type": "sha512"}
    by_get = get(proxy.srv, proxy.pilot, url, type="size")
    assert by_get.json() == {"url": url, "size": len(data)}


# -- the cache -------------------------------------------------------------------------------

def test_a_cached_file_is_served_without_the_source(proxy: Proxy, upstream: Upstream) -> None:
    data = upstream.add("cached.bin", 2 * MiB + 3)
    url = upstream.url("file", "cached.bin")
    sha512 = hashlib.sha512(data).hexdigest()
    first = get(proxy.srv, proxy.pilot, url, cache="1")
    assert first.status == 200 and first.body == data
    assert cache_entries(proxy.srv)[url] == {"url": url, "size": len(data), "sha512": sha512}
    second = get(proxy.srv, proxy.pilot, url, cache="1")
    third = post(proxy.srv, proxy.pilot, url=url, type="download", cache=True)
    for answer in (second, third):
        assert answer.status == 200 and answer.body == data
        assert answer.headers["X-Checksum-Sha512"] == sha512
        assert answer.headers["Content-Length"] == str(len(data))
    assert post(proxy.srv, proxy.pilot, url=url, type="size", cache=True).json()["size"] == \
        len(data)
    assert post(proxy.srv, proxy.pilot, url=url, type="checksum",
                cache=True).json()["checksum"] == sha512
    assert upstream.gets(url) == 1
    assert upstream.hits["HEAD", urllib.parse.urlsplit(url).path] == 0


def test_a_checksum_with_cache_on_keeps_the_file(proxy: Proxy, upstream: Upstream) -> None:
    data = upstream.add("sum-then-get.bin", 500_000)
    url = upstream.url("file", "sum-then-get.bin")
    answer = post(proxy.srv, proxy.pilot, url=url, type="checksum", cache=True)
    assert answer.json()["checksum"] == hashlib.sha512(data).hexdigest()
    assert get(proxy.srv, proxy.pilot, url, cache="1").body == data
    assert upstream.gets(url) == 1


def test_concurrent_requests_for_one_url_fetch_it_once(proxy: Proxy,
                                                       upstream: Upstream) -> None:
    data = upstream.add("shared.bin", 4 * MiB)
    url = upstream.url("slow", "shared.bin")  # about 1.3 s: everyone arrives meanwhile
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: get(proxy.srv, proxy.pilot, url, cache="1"),
                                range(10)))
    assert [a.status for a in answers] == [200] * 10
    assert all(a.body == data for a in answers)
    assert upstream.gets(url) == 1


def test_a_fetch_that_breaks_off_fails_the_callers_and_is_not_cached(
        proxy: Proxy, upstream: Upstream) -> None:
    data = upstream.add("broken.bin", 2 * MiB)
    url = upstream.url("broken", "broken.bin")

    def attempt(cache: str) -> BaseException | None:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.srv.port, timeout=30)
        try:
            conn.request("GET", "/proxy?" + urllib.parse.urlencode({"url": url,
                                                                   "cache": cache}),
                         headers={"Authorization": f"Bearer {proxy.pilot}"})
            response = conn.getresponse()
            assert response.status == 200
            assert response.headers["Content-Length"] == str(len(data))
            response.read()
        except http.client.IncompleteRead as e:
            assert 0 < len(e.partial) < len(data)
            return e
        finally:
            conn.close()
        return None

    with ThreadPoolExecutor(3) as pool:
        failures = list(pool.map(attempt, ["1", "1", "1"]))
    assert all(isinstance(f, http.client.IncompleteRead) for f in failures), failures
    assert isinstance(attempt("0"), http.client.IncompleteRead)
    assert url not in cache_entries(proxy.srv)
    assert cache_temps(proxy.srv) == []
    before = upstream.gets(url)
    assert isinstance(attempt("1"), http.client.IncompleteRead)
    assert upstream.gets(url) == before + 1, "a retry goes to the source again"


# -- refusals and upstream errors ------------------------------------------------------------

def test_urls_outside_the_allow_list_are_refused_unfetched(proxy: Proxy,
                                                           upstream: Upstream) -> None:
    port = upstream.port
    for url in [f"{upstream.base}/secret/x", f"http://127.1:{port}/pub/file/x",
                "http://0x7f000001/pub/file/x", f"{upstream.base}/pub/../secret/x",
                f"{upstream.base}/pub%2f..%2fsecret/x", f"http://127.0.0.1:{port}@evil/",
                f"http://127.0.0.1:{port}.evil.com/pub/", "file:///etc/passwd",
                f"http://localhost:{port}/pub/file/x"]:
        for answer in (post(proxy.srv, proxy.pilot, url=url),
                       get(proxy.srv, proxy.pilot, url, type="size")):
            assert answer.status == 403, (url, answer.body)
            assert answer.headers["Content-Type"].startswith("application/json")
            assert answer.json()["error"], url
    assert upstream.hits["GET", "/secret/x"] == 0


def test_redirects_are_followed_only_inside_the_allow_list(proxy: Proxy,
                                                           upstream: Upstream) -> None:
    data = upstream.add("target.bin", 100_000)
    inside = upstream.url("redirect") + "?" + urllib.parse.urlencode(
        {"to": upstream.url("file", "target.bin")})
    answer = post(proxy.srv, proxy.pilot, url=inside)
    assert answer.status == 200 and answer.body == data
    outside = upstream.url("redirect") + "?" + urllib.parse.urlencode(
        {"to": f"{upstream.base}/secret/x"})
    refused = post(proxy.srv, proxy.pilot, url=outside)
    assert refused.status == 403 and "secret" in refused.json()["error"]
    assert upstream.hits["GET", "/secret/x"] == 0


def test_upstream_failures_map_to_404_and_502(proxy: Proxy, upstream: Upstream) -> None:
    missing = post(proxy.srv, proxy.pilot, url=upstream.url("file", "no-such-file"))
    assert missing.status == 404 and "no such file" in missing.json()["error"]
    for cache in (False, True):
        error = post(proxy.srv, proxy.pilot, url=upstream.url("error"), cache=cache)
        assert error.status == 502 and "500" in error.json()["error"]
    assert post(proxy.srv, proxy.pilot, url=upstream.url("file", "no-such-file"),
                type="size").status == 404


def test_bad_input_is_400_and_fetches_nothing(proxy: Proxy, upstream: Upstream) -> None:
    url = upstream.url("file", "never.bin")
    bodies = [b"{}", b'{"url": ""}', b'{"url": 5}', b"not json", b"[1, 2]",
              json.dumps({"url": url, "type": "upload"}).encode(),
              json.dumps({"url": url, "cache": "maybe"}).encode()]
    for body in bodies:
        answer = call(proxy.srv, "POST", "/download", body, proxy.pilot)
        assert answer.status == 400, body
        assert answer.json()["status"] == 400 and answer.json()["error"], body
    assert call(proxy.srv, "GET", "/proxy", key=proxy.pilot).status == 400
    assert get(proxy.srv, proxy.pilot, url, type="list").status == 400
    assert upstream.gets(url) == 0


def test_a_passkey_is_needed(proxy: Proxy, upstream: Upstream) -> None:
    data = upstream.add("auth.bin", 1000)
    url = upstream.url("file", "auth.bin")
    anonymous = post(proxy.srv, None, url=url)
    assert anonymous.status == 401 and anonymous.json()["error"]
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    assert call(proxy.srv, "POST", "/download", json.dumps({"url": url}).encode(),
                "not-a-passkey").status == 401
    assert upstream.gets(url) == 0
    assert post(proxy.srv, proxy.pilot, url=url).body == data


# -- flow control ----------------------------------------------------------------------------

def test_a_slow_caller_holds_back_the_source(proxy: Proxy, upstream: Upstream) -> None:
    """A 400 MB file to a caller that takes 8 MB in a few seconds: the source is held
    back to a few socket buffers ahead of the caller, and the server's memory stays
    flat. Without flow control it would take the whole file at loopback speed."""
    size = 400 * MiB
    path = f"/pub/big/{size}"
    query = urllib.parse.urlencode({"url": upstream.base + path})
    rss_before = rss_kib(proxy.srv.proc.pid)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", proxy.srv.port))
    try:
        sock.sendall(request_head("GET", f"/proxy?{query}", key=proxy.pilot, host="proxy"))
        received = 0
        peak_rss = rss_before
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            received += len(sock.recv(16 * 1024))
            time.sleep(0.01)
            peak_rss = max(peak_rss, rss_kib(proxy.srv.proc.pid))
        ahead = upstream.sent[path] - received
        print(f"flow control: the caller took {received / MiB:.1f} MiB, the source was "
              f"{ahead / MiB:.1f} MiB ahead, server memory "
              f"+{(peak_rss - rss_before) / 1024:.1f} MiB")
        assert 0 < received < 20 * MiB
        assert ahead < 64 * MiB, f"the source got {ahead / MiB:.0f} MiB ahead of the caller"
        assert (peak_rss - rss_before) * 1024 < 100 * MiB, \
            f"server memory grew by {(peak_rss - rss_before) / 1024:.0f} MiB"
    finally:
        sock.close()
    # the caller went away: the source is let go, and the server carries on
    deadline = time.monotonic() + 10
    while upstream.sent[path] < size and time.monotonic() < deadline:
        last = upstream.sent[path]
        time.sleep(0.5)
        if upstream.sent[path] == last:
            break
    assert upstream.sent[path] < size
    assert get(proxy.srv, proxy.pilot, upstream.url("file", "auth.bin")).status in (200, 404)


# -- servers of their own --------------------------------------------------------------------

def test_least_recently_used_entries_are_evicted_first(server: ServerFactory,
                                                       sqlite_url: str,
                                                       upstream: Upstream) -> None:
    srv = server(sqlite_url, env=proxy_env(upstream,
                                           ICEPROD_PROXY_CACHE_MAX_BYTES="250000",
                                           ICEPROD_PROXY_CACHE_RESERVE_BYTES="0"))
    key = srv.deployment.passkey("pilot")
    urls = {}
    for name in ("lru-old", "lru-middle", "lru-new", "lru-huge"):
        upstream.add(name, 300_000 if name == "lru-huge" else 100_000)
        urls[name] = upstream.url("file", name)

    def download(name: str) -> None:
        answer = get(srv, key, urls[name], cache="1")
        assert (answer.status, answer.body == upstream.files[name]) == (200, True), \
            answer.body[:300]

    for name in ("lru-old", "lru-middle"):
        download(name)
        time.sleep(0.05)
    # using the old one again makes "middle" the least recently used
    download("lru-old")
    download("lru-new")
    assert set(cache_entries(srv)) == {urls["lru-old"], urls["lru-new"]}
    download("lru-middle")
    assert (upstream.gets(urls["lru-middle"]), upstream.gets(urls["lru-old"])) == (2, 1)
    # bigger than the whole cache: streamed, not kept, and nothing evicted for it
    before = set(cache_entries(srv))
    huge = get(srv, key, urls["lru-huge"], cache="1")
    assert huge.status == 200 and huge.body == upstream.files["lru-huge"]
    assert set(cache_entries(srv)) == before
    assert upstream.gets(urls["lru-huge"]) == 1


def test_access_rule_and_timeouts(server: ServerFactory, sqlite_url: str,
                                  upstream: Upstream) -> None:
    srv = server(sqlite_url, env=proxy_env(upstream, ICEPROD_PROXY_ACCESS="pilot",
                                           ICEPROD_PROXY_TIMEOUT="1.5"))
    pilot = srv.deployment.passkey("pilot")
    user = srv.deployment.passkey("user", "alice")
    data = upstream.add("rule.bin", 1000)
    url = upstream.url("file", "rule.bin")
    assert post(srv, user, url=url).status == 403
    assert post(srv, pilot, url=url).body == data
    started = time.monotonic()
    hung = post(srv, pilot, url=upstream.url("hang"))
    assert hung.status == 504 and "timed out" in hung.json()["error"]
    assert time.monotonic() - started < 20
    # a port where nothing listens
    closed = f"{upstream.base.rsplit(':', 1)[0]}:{unused_port()}/pub/x"
    srv2 = server.another(srv, env={"ICEPROD_PROXY_ALLOW": closed.rsplit("/", 1)[0] + "/"})
    refused = post(srv2, srv2.deployment.passkey("pilot"), url=closed)
    assert refused.status == 502 and refused.json()["error"]


def test_a_restarted_server_and_a_second_process_share_the_cache(
        server: ServerFactory, sqlite_url: str, upstream: Upstream) -> None:
    first = server(sqlite_url, env=proxy_env(upstream))
    key = first.deployment.passkey("pilot")
    data = upstream.add("restart.bin", 1 * MiB)
    url = upstream.url("file", "restart.bin")
    assert get(first, key, url, cache="1").body == data
    first.stop()
    second = server.another(first, env=proxy_env(upstream))
    third = server.another(first, env=proxy_env(upstream))
    for srv in (second, third):
        answer = get(srv, key, url, cache="1")
        assert answer.body == data
        assert answer.headers["X-Checksum-Sha512"] == hashlib.sha512(data).hexdigest()
    assert upstream.gets(url) == 1
    # two processes filling one new URL at once: both answer whole, one entry remains
    shared = upstream.add("two-procs.bin", 3 * MiB)
    shared_url = upstream.url("slow", "two-procs.bin")
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda s: get(s, key, shared_url, cache="1"),
                                [second, third]))
    assert all(a.status == 200 and a.body == shared for a in answers)
    assert cache_entries(second)[shared_url]["size"] == len(shared)
    assert cache_temps(second) == []


def test_a_slow_caller_of_a_cached_fill_keeps_memory_flat(server: ServerFactory,
                                                          sqlite_url: str,
                                                          upstream: Upstream) -> None:
    """With the cache on, the fill goes on at the source's pace into the temporary file
    (so the file is kept even if the caller leaves); the slow caller reads behind it from
    disk, and memory stays flat all the same."""
    srv = server(sqlite_url, env=proxy_env(upstream))
    key = srv.deployment.passkey("pilot")
    size = 200 * MiB
    url = f"{upstream.base}/pub/big/{size}"
    rss_before = rss_kib(srv.proc.pid)
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        query = urllib.parse.urlencode({"url": url, "cache": "1"})
        sock.sendall(request_head("GET", f"/proxy?{query}", key=key, host="proxy"))
        peak_rss = rss_before
        received = 0
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            received += len(sock.recv(16 * 1024))
            time.sleep(0.01)
            peak_rss = max(peak_rss, rss_kib(srv.proc.pid))
        assert 0 < received < 20 * MiB
    finally:
        sock.close()
    deadline = time.monotonic() + 60
    while url not in cache_entries(srv) and time.monotonic() < deadline:
        peak_rss = max(peak_rss, rss_kib(srv.proc.pid))
        time.sleep(0.1)
    assert cache_entries(srv)[url]["size"] == size
    assert (peak_rss - rss_before) * 1024 < 100 * MiB, \
        f"server memory grew by {(peak_rss - rss_before) / 1024:.0f} MiB"


# -- ftp sources -----------------------------------------------------------------------------

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
