"""Throwaway certificate authorities and server certificates for https test servers.

- :func:`make_ca`: a certificate authority in a directory of its own, made with the
  ``openssl`` command line; its :meth:`CertificateAuthority.issue` signs a server
  certificate for the names it is given (``IP:127.0.0.1, DNS:localhost`` by default).
- :meth:`ServerCertificate.context`: an :class:`ssl.SSLContext` for a Tornado server
  (``ssl_options``) that presents the certificate.

A client trusts such a server only when told about the authority's ``ca.pem``, for
example through ``SSL_CERT_FILE`` (OpenSSL's default verify paths, which Python's default
SSL context loads).
"""

from __future__ import annotations

import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

DEFAULT_NAMES = ("IP:127.0.0.1", "DNS:localhost")
DAYS = "7"


class TLSSetupError(AssertionError):
    pass


def openssl(*args: str, cwd: Path,
            error: type[Exception] = TLSSetupError) -> str:
    """Run the openssl command line in ``cwd``; its output, or ``error`` saying why not."""
    try:
        proc = subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=cwd,
                              timeout=60, check=False)
    except OSError as e:
        raise error(f"cannot run openssl: {e}") from e
    if proc.returncode != 0:
        raise error(f"`openssl {' '.join(args)}` failed: {proc.stderr.strip()}")
    return proc.stdout


@dataclass(frozen=True)
class ServerCertificate:
    cert: Path
    key: Path

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


@dataclass(frozen=True)
class CertificateAuthority:
    directory: Path
    name: str

    @property
    def cert(self) -> Path:
        """The authority's certificate (PEM): what a client must trust."""
        return self.directory / "ca.pem"

    def issue(self, name: str, names: tuple[str, ...] = DEFAULT_NAMES,
              usage: str = "serverAuth") -> ServerCertificate:
        """A certificate ``<name>.pem`` (key ``<name>.key``) signed by this authority, with
        ``names`` as its subjectAltName; ``usage`` "clientAuth" makes a client
        certificate (subject ``/O=<authority>/CN=<name>``)."""
        extensions = self.directory / f"{name}.ext"
        extensions.write_text(
            "basicConstraints = critical,CA:FALSE\n"
            "keyUsage = critical,digitalSignature,keyEncipherment\n"
            f"extendedKeyUsage = {usage}\n"
            f"subjectAltName = {','.join(names)}\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", "-subj", f"/O={self.name}/CN={name}",
                 cwd=self.directory)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", DAYS,
                 "-extfile", extensions.name, cwd=self.directory)
        (self.directory / f"{name}.key").chmod(0o600)
        return ServerCertificate(self.directory / f"{name}.pem",
                                 self.directory / f"{name}.key")


def make_ca(directory: Path, name: str) -> CertificateAuthority:
    """A new certificate authority called ``name`` in ``directory`` (created; it must not
    exist yet)."""
    directory.mkdir(parents=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
             "-out", "ca.pem", "-days", DAYS, "-subj", f"/O={name}/CN={name} CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    (directory / "ca.key").chmod(0o600)
    return CertificateAuthority(directory, name)
