"""The caching file proxy, ``POST /download`` and ``GET /proxy``, against real server
processes and a real upstream (tests/support/upstream.py): a small Tornado server in a
thread of the test process that serves files, counts requests, and can be slow, break off
mid-way, hang and redirect.

Sources on a GridFTP server (``ftp://``) are in test_proxy_gridftp.py.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from tests.support.databases import throwaway_database
from tests.support.datasets import wait_until
from tests.support.http import request_head
from tests.support.servers import ServerProcess, rss_kib, unused_port
from tests.support.upstream import Upstream, cache_entries, cache_temps, call, get, post

if TYPE_CHECKING:
    from tests.conftest import ServerFactory

MiB = 1024 * 1024


# -- fixtures --------------------------------------------------------------------------------

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
    # the caller went away: the source's connection is closed before the whole file was
    # sent, and the server carries on
    wait_until("the source to be let go", lambda: path in upstream.ended, timeout=30)
    ended = upstream.ended[path]
    assert ended < size, f"the source sent all {size} bytes to a caller that had left"
    data = upstream.add("after-slow.bin", 1000)
    answer = get(proxy.srv, proxy.pilot, upstream.url("file", "after-slow.bin"))
    assert answer.status == 200 and answer.body == data, answer.status


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
