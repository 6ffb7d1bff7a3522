"""GSI credentials for ``gsiftp://`` tests: a throwaway certificate authority and its users.

- :func:`make_credentials`: an OpenSSL certificate authority with its Globus signing
  policy, a host certificate for ``localhost``/``127.0.0.1``, a user certificate and a
  grid-mapfile that maps the user to the server's local account, all made with the
  ``openssl`` command line; :class:`GSICredentials` says where each piece is.
- :func:`check_gsi`: whether a ``gsiftp://`` listing works with them, against a server of
  its own, and why not.
- :func:`session_credentials`: the certificates of the whole test process, made and
  checked once; :func:`scheme_server`, a server for "ftp" or "gsiftp" that uses them.

The servers themselves come from :mod:`tests.support.gridftp`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.gridftp import (
    LOCAL_USER,
    X509_VARIABLES,
    GridFTPServer,
    GridFTPSetupError,
    running_server,
    without_x509,
)
from tests.support.tls import openssl

SKIP_GSI = os.environ.get("ICEPROD_TEST_SKIP_GSI", "") == "1"

CA_SUBJECT = "/O=IceProd Test/CN=IceProd Test CA"
HOST_SUBJECT = "/O=IceProd Test/CN=localhost"
USER_SUBJECT = "/O=IceProd Test/CN=IceProd Test User"

_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[host]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
[user]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment,dataEncipherment
extendedKeyUsage = clientAuth
"""


@dataclass(frozen=True)
class GSICredentials:
    """A certificate authority with a host and a user certificate, in ``directory``."""

    directory: Path

    @property
    def cert_dir(self) -> Path:
        return self.directory / "certificates"

    @property
    def gridmap(self) -> Path:
        return self.directory / "grid-mapfile"

    def client_env(self) -> dict[str, str]:
        """What a client needs in its environment to log in as the test user."""
        return {"X509_CERT_DIR": str(self.cert_dir),
                "X509_USER_CERT": str(self.directory / "user.pem"),
                "X509_USER_KEY": str(self.directory / "user.key")}

    def server_env(self) -> dict[str, str]:
        """What the server needs: the host certificate and the grid-mapfile."""
        return {"X509_CERT_DIR": str(self.cert_dir),
                "X509_USER_CERT": str(self.directory / "host.pem"),
                "X509_USER_KEY": str(self.directory / "host.key"),
                "GRIDMAP": str(self.gridmap)}


def _openssl(*args: str, cwd: Path) -> str:
    return openssl(*args, cwd=cwd, error=GridFTPSetupError)


def make_credentials(directory: Path) -> GSICredentials:
    """Make the certificate authority, host and user certificates and the grid-mapfile
    in ``directory`` (created; it must not exist yet).

    The directory is left readable by everyone, and its parents must let everyone
    through: the server checks the data channel's certificates after it has switched
    to user ``nobody``. The keys stay private (0600), which Globus insists on.
    """
    directory.mkdir(parents=True)
    directory.chmod(0o755)
    creds = GSICredentials(directory)
    creds.cert_dir.mkdir(mode=0o755)
    (directory / "openssl.cnf").write_text(_OPENSSL_CONFIG)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
             "-out", "ca.pem", "-days", "7", "-subj", CA_SUBJECT, "-config", "openssl.cnf",
             "-extensions", "ca", cwd=directory)
    ca_hash = _openssl("x509", "-hash", "-noout", "-in", "ca.pem", cwd=directory).strip()
    shutil.copyfile(directory / "ca.pem", creds.cert_dir / f"{ca_hash}.0")
    (creds.cert_dir / f"{ca_hash}.signing_policy").write_text(
        f"access_id_CA X509 '{CA_SUBJECT}'\n"
        "pos_rights globus CA:sign\n"
        "cond_subjects globus '\"/*\"'\n")
    for name, subject in (("host", HOST_SUBJECT), ("user", USER_SUBJECT)):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", "-subj", subject, "-config", "openssl.cnf",
                 cwd=directory)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "7",
                 "-extfile", "openssl.cnf", "-extensions", name, cwd=directory)
        (directory / f"{name}.key").chmod(0o600)
    (directory / "ca.key").chmod(0o600)
    creds.gridmap.write_text(f'"{USER_SUBJECT}" {LOCAL_USER}\n')
    return creds


def check_gsi(credentials: GSICredentials, log_dir: Path) -> str | None:
    """List ``/tmp/`` over gsiftp with ``globus-url-copy`` as the test user, against a
    server of its own; None when that works, else what went wrong."""
    env = without_x509(dict(os.environ))
    env.update(credentials.client_env())
    try:
        with running_server(log_dir, credentials) as server:
            proc = subprocess.run(["globus-url-copy", "-list", server.url("/tmp/")],
                                  capture_output=True, text=True, env=env, timeout=60,
                                  check=False)
            if proc.returncode != 0:
                return (f"`globus-url-copy -list {server.url('/tmp/')}` exited with "
                        f"{proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}\n"
                        f"server log:\n{server.log_tail()}")
    except (GridFTPSetupError, OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    return None


# -- the test process's credentials ------------------------------------------------------


_session: GSICredentials | str | None = None


def session_credentials() -> GSICredentials:
    """The certificates of this test process, made and checked once, removed at exit.

    The first call also puts the test user's certificate into this process's environment
    for the rest of the run: the library backend reads it there (once, when it is
    activated), and the url-copy backend's programs inherit it.

    When gsiftp cannot work here the calling test fails with the reason, or is skipped
    when ``ICEPROD_TEST_SKIP_GSI=1`` is set (as the MariaDB half of the suite is with
    ``ICEPROD_TEST_SKIP_MARIADB``).
    """
    global _session
    if _session is None:
        directory = Path(tempfile.mkdtemp(prefix="iceprod-gridftp-gsi-"))
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        directory.chmod(0o755)  # mkdtemp's 0700 would keep "nobody" out
        try:
            creds = make_credentials(directory / "credentials")
            problem = check_gsi(creds, directory / "check")
        except GridFTPSetupError as e:
            problem = str(e)
        _session = creds if problem is None else problem
        if problem is None:
            for name in X509_VARIABLES:
                os.environ.pop(name, None)
            os.environ.update(creds.client_env())
    if isinstance(_session, GSICredentials):
        return _session
    message = (f"gsiftp:// with a throwaway certificate authority does not work here: "
               f"{_session}\nSet ICEPROD_TEST_SKIP_GSI=1 to skip the gsiftp half of the "
               "GridFTP tests")
    if SKIP_GSI:
        pytest.skip("ICEPROD_TEST_SKIP_GSI=1: " + message)
    pytest.fail(message, pytrace=False)


@contextmanager
def scheme_server(scheme: str, log_dir: Path) -> Iterator[GridFTPServer]:
    """A server for ``scheme``: anonymous for "ftp", with :func:`session_credentials`
    for "gsiftp"."""
    credentials = session_credentials() if scheme == "gsiftp" else None
    with running_server(log_dir, credentials) as server:
        yield server
