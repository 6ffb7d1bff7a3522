"""The proxy's allow list: what may be fetched, and the normalised URL that is fetched."""

from __future__ import annotations

import pytest

from iceprod_server.files.allow import AllowList, Refused, parse

PORT = 8123
ALLOW = AllowList([f"http://127.0.0.1:{PORT}/data/", "https://Example.ORG/sim",
                   "gsiftp://gridftp.example.org/data/exp/", "ftp://[::1]:2121/pub/",
                   "http://wide.example.org"])


@pytest.mark.parametrize("url, fetched", [
    (f"http://127.0.0.1:{PORT}/data/x", f"http://127.0.0.1:{PORT}/data/x"),
    (f"HTTP://127.0.0.1:{PORT}/data/sub/file.i3.zst",
     f"http://127.0.0.1:{PORT}/data/sub/file.i3.zst"),
    (f"http://127.0.0.1:{PORT}/data/./a/../b", f"http://127.0.0.1:{PORT}/data/b"),
    (f"http://127.0.0.1:{PORT}/data/a/%2e%2e/b", f"http://127.0.0.1:{PORT}/data/b"),
    (f"http://127.0.0.1:{PORT}/data/", f"http://127.0.0.1:{PORT}/data/"),
    (f"http://127.0.0.1:{PORT}/data", f"http://127.0.0.1:{PORT}/data"),
    (f"http://127.0.0.1:{PORT}/data/a%20b?x=1&y=/..", f"http://127.0.0.1:{PORT}/data/a%20b"
                                                      "?x=1&y=/.."),
    (f"http://127.0.0.1:{PORT}/data/x#fragment", f"http://127.0.0.1:{PORT}/data/x"),
    (f"http://127.0.0.1.:{PORT}/data/x", f"http://127.0.0.1:{PORT}/data/x"),
    ("https://example.org/sim/f", "https://example.org/sim/f"),
    ("https://EXAMPLE.org:443/sim/f", "https://example.org/sim/f"),
    ("https://example.org:/sim/f", "https://example.org/sim/f"),
    ("https://ｅｘａｍｐｌｅ.org/sim/f", "https://example.org/sim/f"),
    ("gsiftp://gridftp.example.org:2811/data/exp/run1/f", "gsiftp://gridftp.example.org"
                                                         "/data/exp/run1/f"),
    ("ftp://[0:0::1]:2121/pub/f", "ftp://[::1]:2121/pub/f"),
    ("http://wide.example.org/anything/at/all", "http://wide.example.org/anything/at/all"),
    ("http://wide.example.org", "http://wide.example.org/"),
])
def test_allowed_urls_are_fetched_normalised(url: str, fetched: str) -> None:
    assert ALLOW.check(url).url == fetched


@pytest.mark.parametrize("url, why", [
    # loopback written another way: not the allowed host
    (f"http://127.1:{PORT}/data/x", "canonical"),
    ("http://0x7f000001/data/x", "canonical"),
    (f"http://0x7f.0.0.1:{PORT}/data/x", "canonical"),
    (f"http://2130706433:{PORT}/data/x", "canonical"),
    (f"http://0177.0.0.1:{PORT}/data/x", "canonical"),
    (f"http://127.000.000.001:{PORT}/data/x", "canonical"),
    (f"http://[::ffff:127.0.0.1]:{PORT}/data/x", "allow list"),
    (f"http://localhost:{PORT}/data/x", "allow list"),
    (f"http://127.0.0.1:{PORT + 1}/data/x", "allow list"),
    ("http://127.0.0.1/data/x", "allow list"),
    (f"https://127.0.0.1:{PORT}/data/x", "allow list"),
    # out of the directory
    (f"http://127.0.0.1:{PORT}/data/../secret", "allow list"),
    (f"http://127.0.0.1:{PORT}/data/%2e%2e/secret", "allow list"),
    (f"http://127.0.0.1:{PORT}/data/%2E%2E/%2e%2e/secret", "above the root"),
    (f"http://127.0.0.1:{PORT}/data%2f..%2fsecret", "slashes"),
    (f"http://127.0.0.1:{PORT}/data/..%2fsecret", "slashes"),
    (f"http://127.0.0.1:{PORT}/data/..%5csecret", "slashes"),
    (f"http://127.0.0.1:{PORT}/database/x", "allow list"),
    (f"http://127.0.0.1:{PORT}/", "allow list"),
    ("https://example.org/simulation/x", "allow list"),
    # user information and host tricks
    (f"http://127.0.0.1:{PORT}@evil/data/x", "user information"),
    (f"http://user:pw@127.0.0.1:{PORT}/data/x", "user information"),
    (f"http://127.0.0.1:{PORT}.evil.com/data/x", "port"),
    (f"http://127.0.0.1:{PORT}:80/data/x", "bad host"),
    ("http://127.0.0.1:99999/data/x", "port"),
    ("http://127.0.0.1%2e/data/x", "percent"),
    ("http://evil.com%00.127.0.0.1/data/x", "percent"),
    ("http://ex ample.org/", "spaces"),
    # characters that parsers disagree on
    (f"http://127.0.0.1:{PORT}\\@evil/data/x", "backslash"),
    (f"http://127.0.0.1:{PORT}/data\\..\\secret", "backslash"),
    (f"http://127.0.0.1:{PORT}/data/x\r\nHost: evil", "control"),
    (f"http://127.0.0.1:{PORT}/data/\tx", "control"),
    (f"http://127.0.0.1:{PORT}/data/%00x", "control"),
    (f"http://127.0.0.1:{PORT}/data/%zz", "percent-encoding"),
    # other schemes, and not URLs at all
    ("file:///etc/passwd", "scheme"),
    ("gopher://127.0.0.1/", "scheme"),
    ("data:text/plain,hi", "absolute"),
    ("//127.0.0.1/data/x", "absolute"),
    ("/data/x", "absolute"),
    ("", "empty"),
    ("gsiftp://gridftp.example.org/data/exp/f?x=1", "query"),
])
def test_refused(url: str, why: str) -> None:
    with pytest.raises(Refused, match=why):
        ALLOW.check(url)


def test_prefix_matches_whole_segments() -> None:
    allow = AllowList(["http://h.example.org/a/b"])
    assert allow.check("http://h.example.org/a/b/c").url == "http://h.example.org/a/b/c"
    with pytest.raises(Refused):
        allow.check("http://h.example.org/a/bc")
    with pytest.raises(Refused):
        allow.check("http://h.example.org/a")


def test_an_empty_allow_list_refuses_everything() -> None:
    with pytest.raises(Refused, match="allow list"):
        AllowList([]).check("http://127.0.0.1/x")


def test_the_fetched_url_reparses_to_itself() -> None:
    """What is fetched parses to the same target: no second reading differs."""
    for url in ["http://127.0.0.1:8123/data/a%2Fb".replace("%2F", "%25"),
                "http://h.example.org/x/%7e/%C3%A9;p=1/(a)",
                "https://h.example.org/é/ü?q=ä"]:
        target = parse(url)
        assert parse(target.url) == target
