"""GSI authentication of an FTP control connection, for the commands the url-copy backend
sends itself on ``gsiftp://`` URLs.

GSI is TLS carried inside the FTP control channel (RFC 2228): ``AUTH GSSAPI``, then the
TLS handshake records travel base64-encoded in ``ADAT`` commands and ``335 ADAT=``
replies. The TLS engine here is an :class:`ssl.SSLObject` on memory buffers. Once the
handshake is done, Globus expects one more byte through the tunnel, its delegation flag:
``0`` (no delegation). When the client's last handshake message still had to go out
(TLS 1.3), the server first answers it with a token of its own (a null byte or session
tickets), and the flag follows that. Every later command goes as ``ENC <base64 TLS
record>``; the server answers each reply line as ``632 <base64 TLS record>``.

Credentials are found as the Globus tools find them: ``X509_USER_PROXY``, else
``X509_USER_CERT``/``X509_USER_KEY``, else the default proxy ``/tmp/x509up_u<uid>``, else
``~/.globus/usercert.pem``/``userkey.pem``; trusted authorities in ``X509_CERT_DIR``, else
``~/.globus/certificates``, else ``/etc/grid-security/certificates``. The server's
certificate must name the URL's host (subjectAltName), as for HTTPS.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

from iceprod_server.gsiftp import errors
from iceprod_server.gsiftp.ftpcontrol import ConnectionClosed, ControlConnection, ReplyError

log = logging.getLogger(__name__)

_ADAT = re.compile(r"ADAT=(\S+)")
_CA_FILE = re.compile(r"[0-9a-f]{8}\.\d+")
# a handshake needs four or five token exchanges; more means something is wrong
_MAX_ROUNDS = 10


@dataclass(frozen=True)
class Credentials:
    """Where the client certificate and the trusted authorities are, with the files'
    modification times, so that a renewed proxy makes a new TLS context."""

    cert: str
    key: str | None
    cert_dir: str
    stamps: tuple[float, ...]


class CredentialError(Exception):
    """The credential or the trusted certificates cannot be used."""


class TLSProtection:
    """The ENC wrapping of commands and unwrapping of 63x replies, by the TLS session the
    handshake established."""

    def __init__(self, tls: ssl.SSLObject, incoming: ssl.MemoryBIO,
                 outgoing: ssl.MemoryBIO) -> None:
        self._tls = tls
        self._incoming = incoming
        self._outgoing = outgoing

    def seal(self, line: bytes) -> bytes:
        self._tls.write(line)
        return b"ENC " + base64.b64encode(self._outgoing.read()) + b"\r\n"

    def unseal(self, token: str) -> bytes:
        try:
            self._incoming.write(base64.b64decode(token, validate=True))
        except ValueError as exc:
            raise ConnectionClosed(f"garbled protected reply: {exc}") from exc
        return _read_clear(self._tls)


async def authenticate(conn: ControlConnection, url: str) -> None:
    """Run the GSI handshake on ``conn`` and log in as the certificate's mapped user."""
    loop = asyncio.get_running_loop()
    creds = await loop.run_in_executor(None, find_credentials, url)
    try:
        context = await loop.run_in_executor(None, _context, creds)
    except (OSError, ssl.SSLError) as exc:
        raise errors.PermissionDeniedError(
            url, f"cannot load the GSI credential {creds.cert}: {exc}") from exc
    except CredentialError as exc:
        raise errors.PermissionDeniedError(url, f"GSI: {exc}") from exc
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=conn.host)
    await conn.expect("AUTH GSSAPI", 334)
    try:
        await _handshake(conn, tls, incoming, outgoing)
    except ssl.SSLCertVerificationError as exc:
        raise errors.PermissionDeniedError(
            url, f"the server's certificate is not trusted: {exc.verify_message}") from exc
    except ssl.SSLError as exc:
        raise errors.PermissionDeniedError(url, f"GSI handshake failed: {exc}") from exc
    conn.protection = TLSProtection(tls, incoming, outgoing)
    # the grid-mapfile picks the local account for the certificate
    await conn.login(":globus-mapping:", "dummy")
    # listings come over a plain data connection; the control channel stays protected.
    # A server that insists on data channel authentication still serves the other
    # commands, so a refusal is not fatal here.
    reply = await conn.command("DCAU N")
    if reply.code >= 300:
        log.info("%s:%d refuses DCAU N; detailed listings will fail: %s", conn.host,
                 conn.port, reply.text)


async def _handshake(conn: ControlConnection, tls: ssl.SSLObject,
                     incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> None:
    done = flag_sent = flag_due = False
    for _ in range(_MAX_ROUNDS):
        if not done:
            try:
                tls.do_handshake()
                done = True
                # nothing left to send: the flag goes now; else after the server's answer
                flag_due = not outgoing.pending
            except ssl.SSLWantReadError:
                pass
        elif not flag_sent:
            _read_clear(tls)  # the server's null byte or session tickets
            flag_due = True
        if flag_due and not flag_sent:
            tls.write(b"0")
            flag_sent = True
        token = outgoing.read()
        reply = await conn.command("ADAT " + base64.b64encode(token).decode("ascii"))
        found = _ADAT.search(reply.lines[-1])
        if found:
            try:
                incoming.write(base64.b64decode(found.group(1), validate=True))
            except ValueError as exc:
                raise ConnectionClosed(f"garbled ADAT reply: {exc}") from exc
        if reply.code == 335:
            continue
        if reply.code in (234, 235) and done:
            _read_clear(tls)
            log.debug("GSI to %s:%d with %s", conn.host, conn.port, tls.version())
            return
        raise ReplyError("ADAT", reply)
    raise ConnectionClosed("the GSI handshake did not finish")


def _read_clear(tls: ssl.SSLObject) -> bytes:
    """Everything the TLS session has decrypted so far."""
    data = bytearray()
    while True:
        try:
            chunk = tls.read(65536)
        except ssl.SSLWantReadError:
            return bytes(data)
        except ssl.SSLZeroReturnError as exc:
            raise ConnectionClosed("the server ended the GSI session") from exc
        except ssl.SSLError as exc:
            raise ConnectionClosed(f"protected reply: {exc}") from exc
        if not chunk:
            return bytes(data)
        data += chunk


def find_credentials(url: str) -> Credentials:
    """The client credential and trusted authorities by the Globus conventions (blocking:
    it looks at files)."""
    env = os.environ
    home = Path.home()
    cert_dir = env.get("X509_CERT_DIR") or next(
        (str(p) for p in (home / ".globus" / "certificates",
                          Path("/etc/grid-security/certificates")) if p.is_dir()),
        "/etc/grid-security/certificates")
    default_proxy = f"/tmp/x509up_u{os.getuid()}"  # noqa: S108 - the Globus convention
    cert: str | None
    key: str | None
    if env.get("X509_USER_PROXY"):
        cert, key = env["X509_USER_PROXY"], None
    elif env.get("X509_USER_CERT"):
        cert, key = env["X509_USER_CERT"], env.get("X509_USER_KEY")
    elif os.path.exists(default_proxy):
        cert, key = default_proxy, None
    else:
        cert = str(home / ".globus" / "usercert.pem")
        key = str(home / ".globus" / "userkey.pem")
    if not os.path.exists(cert):
        raise errors.PermissionDeniedError(
            url, f"no GSI credential ({cert} does not exist): set X509_USER_PROXY, or "
                 "X509_USER_CERT and X509_USER_KEY")
    stamps = []
    for path in (cert, key, cert_dir):
        try:
            stamps.append(os.stat(path).st_mtime if path else 0.0)
        except OSError:
            stamps.append(0.0)
    return Credentials(cert, key, cert_dir, tuple(stamps))


@functools.lru_cache(maxsize=8)
def _context(creds: Credentials) -> ssl.SSLContext:
    """A TLS client context for ``creds`` (blocking: it reads the files). The trusted
    certificates are all loaded here, so that no handshake reads the disk."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_cert_chain(creds.cert, creds.key)
    loaded = 0
    try:
        names = sorted(os.listdir(creds.cert_dir))
    except OSError as exc:
        raise CredentialError(f"cannot read the certificate directory {creds.cert_dir}: "
                              f"{exc}") from exc
    for name in names:
        if _CA_FILE.fullmatch(name):
            context.load_verify_locations(cafile=os.path.join(creds.cert_dir, name))
            loaded += 1
    if not loaded:
        raise CredentialError(f"no trusted certificates (<hash>.0) in {creds.cert_dir}")
    return context
