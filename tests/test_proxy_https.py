"""The file proxy against https sources: real server processes and real https upstreams
(tests/support/upstream.py served with TLS) whose certificates come from throwaway
certificate authorities (tests/support/tls.py).

The server is told to trust the test authority the way an operator would, with
``SSL_CERT_FILE`` in its environment: the proxy's Tornado client verifies certificates
with Python's default SSL context, which loads OpenSSL's default verify paths, and those
honour ``SSL_CERT_FILE``. The last test shows that this variable decides which authority
the server trusts.
"""

from __future__ import annotations

import hashlib
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from tests.support.databases import throwaway_database
from tests.support.http import Reply
from tests.support.servers import ServerProcess
from tests.support.tls import CertificateAuthority, make_ca
from tests.support.upstream import Upstream, cache_entries, cache_temps, get, post

if TYPE_CHECKING:
    from tests.conftest import ServerFactory

MiB = 1024 * 1024


# -- fixtures --------------------------------------------------------------------------------

@dataclass
class Authorities:
    trusted: CertificateAuthority
    other: CertificateAuthority


@dataclass
class Upstreams:
    trusted: Upstream
    """https, certificate from the authority in the server's ``SSL_CERT_FILE``"""
    untrusted: Upstream
    """https, certificate from another authority; allow-listed all the same"""
    misnamed: Upstream
    """https, certificate from the trusted authority, but for another host name"""
    plain: Upstream
    """http, not in the allow list: where redirects try to lead"""

    def allow(self) -> str:
        return ",".join(f"{up.base}/pub/" for up in (self.trusted, self.untrusted,
                                                      self.misnamed))


@pytest.fixture(scope="module")
def authorities(tmp_path_factory: pytest.TempPathFactory) -> Authorities:
    directory = tmp_path_factory.mktemp("tls")
    return Authorities(make_ca(directory / "trusted", "IceProd Test Trusted"),
                       make_ca(directory / "other", "IceProd Test Other"))


@pytest.fixture(scope="module")
def upstreams(authorities: Authorities) -> Iterator[Upstreams]:
    ups = Upstreams(
        trusted=Upstream(authorities.trusted.issue("upstream").context()),
        untrusted=Upstream(authorities.other.issue("upstream").context()),
        misnamed=Upstream(authorities.trusted.issue(
            "misnamed", ("DNS:elsewhere.invalid",)).context()),
        plain=Upstream())
    started: list[Upstream] = []
    try:
        for up in (ups.trusted, ups.untrusted, ups.misnamed, ups.plain):
            up.start()
            started.append(up)
        yield ups
    finally:
        for up in started:
            up.stop()


def https_env(authorities: Authorities, upstreams: Upstreams) -> dict[str, str]:
    return {"SSL_CERT_FILE": str(authorities.trusted.cert),
            "ICEPROD_PROXY_ALLOW": upstreams.allow()}


@dataclass
class Proxy:
    srv: ServerProcess
    pilot: str


@pytest.fixture(scope="module")
def proxy(module_server: ServerFactory, authorities: Authorities, upstreams: Upstreams,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    with throwaway_database("sqlite", tmp_path_factory.mktemp("db")) as db_url:
        srv = module_server(db_url, env=https_env(authorities, upstreams))
        yield Proxy(srv, srv.deployment.passkey("pilot"))


def error_of(answer: Reply, status: int) -> str:
    """The message of a JSON error answer with ``status``."""
    assert answer.status == status, (answer.status, answer.body[:300])
    assert answer.headers["Content-Type"].startswith("application/json")
    body = answer.json()
    assert body["status"] == status and isinstance(body["error"], str), body
    message: str = body["error"]
    return message


# -- downloads, sizes and checksums ----------------------------------------------------------

def test_https_downloads_are_byte_identical_with_and_without_the_cache(
        proxy: Proxy, upstreams: Upstreams) -> None:
    up = upstreams.trusted
    data = up.add("https.bin", 3 * MiB + 17)
    url = up.url("file", "https.bin")
    assert url.startswith("https://127.0.0.1:")
    sha512 = hashlib.sha512(data).hexdigest()

    uncached = [get(proxy.srv, proxy.pilot, url), post(proxy.srv, proxy.pilot, url=url)]
    for answer in uncached:
        assert answer.status == 200, answer.body[:300]
        assert answer.body == data
        assert answer.headers["Content-Type"] == "application/octet-stream"
        assert answer.headers["Content-Length"] == str(len(data))
    assert up.gets(url) == 2
    assert url not in cache_entries(proxy.srv), "without cache nothing is kept"

    filled = get(proxy.srv, proxy.pilot, url, cache="1")
    assert filled.status == 200 and filled.body == data
    assert cache_entries(proxy.srv)[url] == {"url": url, "size": len(data), "sha512": sha512}
    hits = [get(proxy.srv, proxy.pilot, url, cache="1"),
            post(proxy.srv, proxy.pilot, url=url, type="download", cache=True)]
    for answer in hits:
        assert answer.status == 200 and answer.body == data
        assert answer.headers["Content-Length"] == str(len(data))
        assert answer.headers["X-Checksum-Sha512"] == sha512
    assert up.gets(url) == 3, "the cached copy is served without the source"


def test_https_sizes_and_checksums(proxy: Proxy, upstreams: Upstreams) -> None:
    up = upstreams.trusted
    data = up.add("sums.bin", 2 * MiB + 5)
    url = up.url("file", "sums.bin")
    sha512 = hashlib.sha512(data).hexdigest()
    path = urllib.parse.urlsplit(url).path

    assert post(proxy.srv, proxy.pilot, url=url, type="size").json() == \
        {"url": url, "size": len(data)}
    assert get(proxy.srv, proxy.pilot, url, type="size").json() == \
        {"url": url, "size": len(data)}
    assert up.hits["HEAD", path] == 2
    assert post(proxy.srv, proxy.pilot, url=url, type="checksum").json() == \
        {"url": url, "checksum": sha512, "type": "sha512"}
    assert url not in cache_entries(proxy.srv)

    # with the cache on, hashing the file keeps it; the answers after come from the cache
    assert get(proxy.srv, proxy.pilot, url, type="checksum", cache="1").json() == \
        {"url": url, "checksum": sha512, "type": "sha512"}
    assert cache_entries(proxy.srv)[url]["sha512"] == sha512
    gets = up.gets(url)
    assert post(proxy.srv, proxy.pilot, url=url, type="size", cache=True).json() == \
        {"url": url, "size": len(data)}
    assert post(proxy.srv, proxy.pilot, url=url, type="checksum", cache=True).json() == \
        {"url": url, "checksum": sha512, "type": "sha512"}
    assert (up.gets(url), up.hits["HEAD", path]) == (gets, 2)

    missing = up.url("file", "no-such-file")
    assert "no such file" in error_of(post(proxy.srv, proxy.pilot, url=missing), 404)


# -- certificates the server must not accept -------------------------------------------------

def requests_for(proxy: Proxy, url: str) -> list[Reply]:
    """Every kind of request for ``url``, with the cache off and on."""
    return [get(proxy.srv, proxy.pilot, url),
            get(proxy.srv, proxy.pilot, url, cache="1"),
            post(proxy.srv, proxy.pilot, url=url),
            post(proxy.srv, proxy.pilot, url=url, cache=True),
            post(proxy.srv, proxy.pilot, url=url, type="size", cache=True),
            post(proxy.srv, proxy.pilot, url=url, type="checksum"),
            post(proxy.srv, proxy.pilot, url=url, type="checksum", cache=True)]


def test_an_untrusted_certificate_is_a_502_that_says_so(proxy: Proxy,
                                                          upstreams: Upstreams) -> None:
    up = upstreams.untrusted
    up.add("untrusted.bin", 1 * MiB)
    url = up.url("file", "untrusted.bin")
    messages = {error_of(answer, 502) for answer in requests_for(proxy, url)}
    print("the proxy says:", *sorted(messages), sep="\n  ")
    for message in messages:
        assert url in message
        assert "TLS certificate was refused" in message
        assert "unable to get local issuer certificate" in message
        assert "SSL_CERT_FILE" in message, "the message says how to trust an authority"
    assert sum(up.hits.values()) == 0, "no request may reach a server that is not trusted"
    assert url not in cache_entries(proxy.srv)
    assert cache_temps(proxy.srv) == []


def test_a_certificate_for_another_host_is_a_502_that_says_so(proxy: Proxy,
                                                                upstreams: Upstreams) -> None:
    up = upstreams.misnamed
    up.add("misnamed.bin", 1000)
    url = up.url("file", "misnamed.bin")
    messages = {error_of(answer, 502) for answer in requests_for(proxy, url)}
    print("the proxy says:", *sorted(messages), sep="\n  ")
    for message in messages:
        assert url in message
        assert "TLS certificate was refused" in message
        assert "IP address mismatch" in message
    assert sum(up.hits.values()) == 0
    assert url not in cache_entries(proxy.srv)
    assert cache_temps(proxy.srv) == []


# -- redirects -------------------------------------------------------------------------------

def redirect(up: Upstream, to: str) -> str:
    return up.url("redirect") + "?" + urllib.parse.urlencode({"to": to})


def test_a_redirect_from_https_to_http_outside_the_allow_list_is_403(
        proxy: Proxy, upstreams: Upstreams) -> None:
    up, plain = upstreams.trusted, upstreams.plain
    data = up.add("redirected.bin", 100_000)
    inside = get(proxy.srv, proxy.pilot, redirect(up, up.url("file", "redirected.bin")))
    assert inside.status == 200 and inside.body == data

    plain.add("plain.bin", 1000)
    # another (plain http) server, and the same host and port with http instead of https
    for target in (plain.url("file", "plain.bin"),
                   f"http://127.0.0.1:{up.port}/pub/file/redirected.bin"):
        url = redirect(up, target)
        for answer in (get(proxy.srv, proxy.pilot, url),
                       post(proxy.srv, proxy.pilot, url=url, cache=True),
                       post(proxy.srv, proxy.pilot, url=url, type="size")):
            message = error_of(answer, 403)
            assert target in message and "refused" in message, message
        assert url not in cache_entries(proxy.srv)
    assert sum(plain.hits.values()) == 0
    assert cache_temps(proxy.srv) == []


# -- where the trust comes from --------------------------------------------------------------

def test_ssl_cert_file_decides_which_upstreams_are_trusted(
        server: ServerFactory, sqlite_url: str, authorities: Authorities,
        upstreams: Upstreams, monkeypatch: pytest.MonkeyPatch) -> None:
    """The module's server trusts the upstreams of the authority named by its
    ``SSL_CERT_FILE``. Naming the other authority swaps which upstream is trusted; with
    neither ``SSL_CERT_FILE`` nor ``SSL_CERT_DIR`` set (the system's store) neither is."""
    trusted, untrusted = upstreams.trusted, upstreams.untrusted
    trusted.add("trust.bin", 1000)
    other_data = untrusted.add("trust.bin", 2000)
    url, other_url = trusted.url("file", "trust.bin"), untrusted.url("file", "trust.bin")

    swapped = server(sqlite_url, env={"SSL_CERT_FILE": str(authorities.other.cert),
                                      "ICEPROD_PROXY_ALLOW": upstreams.allow()})
    key = swapped.deployment.passkey("pilot")
    assert "unable to get local issuer certificate" in error_of(get(swapped, key, url), 502)
    answer = get(swapped, key, other_url)
    assert answer.status == 200 and answer.body == other_data

    # the test process's own environment is what a server inherits besides ICEPROD_*
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    system = server.another(swapped, env={"ICEPROD_PROXY_ALLOW": upstreams.allow()})
    for target in (url, other_url):
        assert "unable to get local issuer certificate" in error_of(get(system, key, target),
                                                                   502)
    assert (trusted.gets(url), untrusted.gets(other_url)) == (0, 1)
