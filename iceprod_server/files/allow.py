"""Which URLs the file proxy may fetch: the allow-list check.

A URL is parsed here, strictly, into its scheme, host, port and path segments, and the
proxy then fetches the URL rebuilt from those parts (:attr:`Target.url`), never the string
it was given: what was checked is what is fetched, whatever another URL parser would have
made of the original.

A prefix from ``[proxy] allow`` matches a URL with the same scheme, host (lowercased,
IDNA-encoded), port (the scheme's default when none is written) and whole leading path
segments, after ``.`` and ``..`` segments (also percent-encoded ones) are resolved. Refused
outright: user information (``http://allowed@evil/``), backslashes, control characters and
spaces, percent-encoded slashes and backslashes, hosts that look numeric but are not a
canonical dotted IPv4 address (``127.1``, ``0x7f000001``, ``2130706433``), and schemes
other than http, https, ftp and gsiftp.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes

DEFAULT_PORTS = {"http": 80, "https": 443, "ftp": 21, "gsiftp": 2811}

_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)([^?#]*)(\?[^#]*)?(?:#.*)?",
                  re.DOTALL)
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_HOST = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)*")
# a last label like this makes resolvers read the host as a number (inet_aton)
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)")
# what may stay unescaped in a path segment (RFC 3986 pchar)
_SEGMENT_SAFE = "!$&'()*+,;=:@-._~"


class Refused(ValueError):
    """The URL may not be proxied; the message says why (HTTP 403)."""


@dataclass(frozen=True)
class Target:
    """A parsed, normalised URL."""

    scheme: str
    host: str  # lowercase ASCII (IDNA); an IPv6 address without brackets
    port: int
    segments: tuple[bytes, ...]  # decoded path segments, dot segments resolved
    query: str  # "" or "?..." as given

    @property
    def path(self) -> str:
        return "/" + "/".join(quote(s, safe=_SEGMENT_SAFE) for s in self.segments)

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == DEFAULT_PORTS[self.scheme]:
            return host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """The URL to fetch, and the cache key."""
        return f"{self.scheme}://{self.netloc}{self.path}{self.query}"

    def under(self, prefix: Target) -> bool:
        n = len(prefix.segments)
        return (self.scheme == prefix.scheme and self.host == prefix.host
                and self.port == prefix.port and self.segments[:n] == prefix.segments)


def parse(url: str) -> Target:
    """Parse and normalise ``url``; raises :class:`Refused` for anything ambiguous."""
    if not url:
        raise Refused("the URL is empty")
    if "\\" in url:
        raise Refused("backslashes are not allowed in a URL")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise Refused("spaces and control characters are not allowed in a URL")
    m = _URL.fullmatch(url)
    if m is None:
        raise Refused("not an absolute URL (scheme://host/path)")
    scheme = m[1].lower()
    if scheme not in DEFAULT_PORTS:
        raise Refused(f"scheme {scheme!r} is not proxied; only "
                      f"{', '.join(DEFAULT_PORTS)} are")
    host, port = _host_port(m[2], scheme)
    query = m[4] or ""
    if query and scheme in ("ftp", "gsiftp"):
        raise Refused(f"a {scheme} URL cannot have a query")
    return Target(scheme, host, port, _segments(m[3] or "/"), query)


def _host_port(netloc: str, scheme: str) -> tuple[str, int]:
    if "@" in netloc:
        raise Refused("user information (user@host) is not allowed in a URL")
    if netloc.startswith("["):
        end = netloc.find("]")
        raw_host, rest = netloc[1:end], netloc[end + 1:]
        if end < 0 or "%" in raw_host or (rest and not rest.startswith(":")):
            raise Refused("malformed IPv6 address")
        try:
            host = ipaddress.IPv6Address(raw_host).compressed
        except ValueError as e:
            raise Refused(f"malformed IPv6 address: {e}") from None
        port_text = rest[1:] if rest else None
    else:
        raw_host, sep, port_text_ = netloc.rpartition(":") if ":" in netloc else (
            netloc, "", "")
        port_text = port_text_ if sep else None
        host = _hostname(raw_host)
    if not port_text:  # none, or "host:" which means the default
        return host, DEFAULT_PORTS[scheme]
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise Refused(f"bad port {port_text!r}")
    return host, int(port_text)


def _hostname(raw: str) -> str:
    if "%" in raw:
        raise Refused("percent-encoding is not allowed in a host name")
    name = raw[:-1] if raw.endswith(".") else raw
    try:
        host = name.encode("idna").decode("ascii").lower() if name else ""
    except UnicodeError as e:
        raise Refused(f"bad host name {raw!r}: {e}") from None
    if not _HOST.fullmatch(host):
        raise Refused(f"bad host name {raw!r}")
    if _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]):
        try:
            canonical = str(ipaddress.IPv4Address(host))
        except ValueError:
            canonical = ""
        if canonical != host:
            raise Refused(f"host {raw!r} is not a canonical dotted IPv4 address")
    return host


def _segments(path: str) -> tuple[bytes, ...]:
    """The decoded segments of ``path`` with ``.`` and ``..`` resolved (RFC 3986 5.2.4);
    a trailing ``/`` stays as a last empty segment."""
    out: list[bytes] = []
    raw_segments = path.split("/")[1:]
    for n, raw in enumerate(raw_segments):
        if _BAD_ESCAPE.search(raw):
            raise Refused("malformed percent-encoding in the path")
        segment = unquote_to_bytes(raw)
        if b"/" in segment or b"\\" in segment:
            raise Refused("percent-encoded slashes and backslashes are not allowed in "
                          "the path")
        if any(b < 0x20 or b == 0x7F for b in segment):
            raise Refused("percent-encoded control characters are not allowed in the path")
        last = n == len(raw_segments) - 1
        if segment == b".":
            if last:
                out.append(b"")
        elif segment == b"..":
            if not out:
                raise Refused("the path goes above the root")
            out.pop()
            if last:
                out.append(b"")
        else:
            out.append(segment)
    return tuple(out)


class AllowList:
    """The configured prefixes; :meth:`check` gives the normalised target of a URL that
    falls under one of them."""

    def __init__(self, prefixes: Iterable[str]) -> None:
        self.prefixes: list[Target] = []
        for prefix in prefixes:
            target = parse(prefix)
            if target.query:
                raise ValueError(f"allow-list prefix {prefix!r} has a query")
            # a prefix names a directory: "/data" and "/data/" both allow /data/...
            segments = target.segments
            if segments and segments[-1] == b"":
                segments = segments[:-1]
            self.prefixes.append(Target(target.scheme, target.host, target.port,
                                        segments, ""))

    def check(self, url: str) -> Target:
        """The target of ``url``; raises :class:`Refused` unless it is allowed."""
        target = parse(url)
        if not any(target.under(prefix) for prefix in self.prefixes):
            raise Refused(f"{target.url} is not under any prefix of the proxy allow list")
        return target
