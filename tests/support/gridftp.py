"""Real GridFTP servers for tests and benchmarks: ``globus-gridftp-server`` on loopback.

- :func:`running_server`: a server on an unused port of 127.0.0.1, anonymous ``ftp://``
  or, given :class:`~tests.support.gsi_ca.GSICredentials`, ``gsiftp://`` with
  certificates. It runs in a process group of its own (one child per connection), and
  stopping it kills the whole group.
- :func:`served_directory`: a directory the server may read and write. The server serves
  the whole filesystem but runs each session as user ``nobody``, who cannot enter
  pytest's private temporary directories, so these live under ``/tmp``.
- :class:`BlackHole`: a listener that accepts connections and never answers (or greets
  and then stalls): what a hung server looks like, for timeout tests.
- :class:`Site`: one test's directory on a server with one backend to reach it.

The certificates for ``gsiftp://`` come from :mod:`tests.support.gsi_ca`, and
``bench/gridftp.py`` starts its servers with the same functions.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

import pytest

from iceprod_server.gsiftp import GridFTPClient, make_client

if TYPE_CHECKING:
    from tests.support.gsi_ca import GSICredentials

T = TypeVar("T")
MiB = 1024 * 1024

HOST = "127.0.0.1"
SERVER_PROGRAM = "globus-gridftp-server"
START_TIMEOUT = 20.0
# the variables through which the Globus libraries find certificates and identities
X509_VARIABLES = ("X509_CERT_DIR", "X509_USER_CERT", "X509_USER_KEY", "X509_USER_PROXY",
                  "X509_VOMS_DIR", "GRIDMAP")
# the local account that both the anonymous and the certificate login run as
LOCAL_USER = "nobody"


class GridFTPSetupError(RuntimeError):
    """A server or the certificates could not be set up; the message says why."""


def without_x509(environ: dict[str, str]) -> dict[str, str]:
    """``environ`` without any certificate setting the caller may have."""
    return {k: v for k, v in environ.items() if k not in X509_VARIABLES}


def unused_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def served_directory(label: str = "data") -> Iterator[Path]:
    """A fresh directory under /tmp that user ``nobody`` can enter, read and write
    (mode 0777), removed with everything in it afterwards."""
    path = Path(tempfile.mkdtemp(prefix=f"iceprod-gridftp-{label}-"))
    try:
        path.chmod(0o777)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- the server --------------------------------------------------------------------------


@dataclass
class GridFTPServer:
    """One ``globus-gridftp-server`` process (the leader of its own process group)."""

    scheme: str  # "ftp" or "gsiftp"
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    def url(self, path: str | os.PathLike[str]) -> str:
        """The URL of an absolute local ``path`` on this server."""
        text = os.fspath(path)
        if not text.startswith("/"):
            raise ValueError(f"not an absolute path: {text!r}")
        return f"{self.scheme}://{HOST}:{self.port}{text}"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """Stop the server and every per-connection child it forked."""
        _kill_group(self.proc)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        # children left after the leader exits are still in the group: wait for them too
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc.poll() is not None and not _group_alive(proc.pid):
                return
            time.sleep(0.05)
    proc.wait(timeout=5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_server(log_dir: Path, credentials: GSICredentials | None = None,
                 port: int | None = None,
                 disabled_commands: tuple[str, ...] = ()) -> GridFTPServer:
    """Start a server and wait until it greets with ``220``.

    Without ``credentials`` it allows anonymous ``ftp://`` logins, run as ``nobody``;
    with them it serves ``gsiftp://`` to the test user, mapped to ``nobody`` too.
    ``disabled_commands`` (such as ``CKSM``) are refused by the server, as an older or
    differently configured server would.
    """
    program = shutil.which(SERVER_PROGRAM) or f"/usr/sbin/{SERVER_PROGRAM}"
    port = port or unused_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    scheme = "gsiftp" if credentials else "ftp"
    log_path = log_dir / f"gridftp-{scheme}-{port}.log"
    argv = [program, "-p", str(port), "-control-interface", HOST, "-data-interface", HOST,
            "-l", str(log_path), "-d", "ERROR,WARN,INFO", "-disable-usage-stats"]
    if disabled_commands:
        argv += ["-disable-command-list", ",".join(disabled_commands)]
    env = without_x509(dict(os.environ))
    if credentials is None:
        argv += ["-aa", "-anonymous-user", LOCAL_USER]
    else:
        env.update(credentials.server_env())
    try:
        with log_path.with_suffix(".stderr").open("wb") as stderr:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=stderr, env=env, start_new_session=True)
    except OSError as e:
        raise GridFTPSetupError(f"cannot start {program}: {e} (install the Debian package "
                                "globus-gridftp-server-progs)") from e
    server = GridFTPServer(scheme, port, proc, log_path)
    try:
        _wait_for_greeting(server)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_for_greeting(server: GridFTPServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        if not server.alive():
            stderr = server.log_path.with_suffix(".stderr").read_text(errors="replace")
            raise GridFTPSetupError(
                f"{SERVER_PROGRAM} exited with {server.proc.returncode} before it was "
                f"ready:\n{stderr[-3000:]}\n{server.log_tail()}")
        try:
            with socket.create_connection((HOST, server.port), timeout=2) as s:
                greeting = s.recv(200).decode(errors="replace")
            if greeting.startswith("220"):
                return
            last = greeting
        except OSError as e:
            last = str(e)
        time.sleep(0.05)
    raise GridFTPSetupError(f"{SERVER_PROGRAM} on port {server.port} did not greet with 220 "
                            f"within {START_TIMEOUT} s (last: {last!r}); its log:\n"
                            f"{server.log_tail()}")


@contextmanager
def running_server(log_dir: Path, credentials: GSICredentials | None = None,
                   disabled_commands: tuple[str, ...] = ()) -> Iterator[GridFTPServer]:
    server = start_server(log_dir, credentials, disabled_commands=disabled_commands)
    try:
        yield server
    finally:
        server.stop()


# -- a server that never answers ---------------------------------------------------------


class BlackHole:
    """A TCP listener on 127.0.0.1 that accepts connections and then says nothing, or
    with ``greet`` sends the FTP greeting ``220`` and then nothing more."""

    def __init__(self, greet: bool = False) -> None:
        self.greet = greet
        self._listener = socket.create_server((HOST, 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._connections: list[socket.socket] = []
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="gridftp-black-hole",
                                        daemon=True)
        self._thread.start()

    def url(self, scheme: str, path: str = "/tmp/nothing-here") -> str:
        return f"{scheme}://{HOST}:{self.port}{path}"

    @property
    def accepted(self) -> int:
        return len(self._connections)

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.greet:
                try:
                    conn.sendall(b"220 black hole ready.\r\n")
                except OSError:
                    pass
            # held open, unread, until close(): the client hears nothing more
            self._connections.append(conn)

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=5)
        self._listener.close()
        for conn in self._connections:
            conn.close()

    def __enter__(self) -> BlackHole:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


# -- one test's directory ----------------------------------------------------------------

# the client's default timeout in tests, and how long a whole scenario may take before the
# test gives up on a backend that ignores its timeouts
CLIENT_TIMEOUT = 60.0
GUARD = 180.0

@dataclass
class Site:
    """One test's directory on a GridFTP server, and the backend to reach it with.

    Files are set up and checked through the local filesystem; everything made here is
    open to user ``nobody`` (directories 0777, files 0666), as whom the server works.
    """

    server: GridFTPServer
    backend: str
    directory: Path

    @property
    def scheme(self) -> str:
        return self.server.scheme

    def url(self, name: str = "") -> str:
        return self.server.url(f"{self.directory}/{name}")

    def mkdir(self, name: str, mode: int = 0o777) -> Path:
        path = self.directory
        for part in Path(name).parts:
            path = path / part
            if not path.is_dir():
                path.mkdir()
                path.chmod(0o777)
        path.chmod(mode)
        return path

    def write(self, name: str, data: bytes, mode: int = 0o666) -> Path:
        parent = Path(name).parent
        path = (self.mkdir(str(parent)) if parent != Path(".") else self.directory) / \
            Path(name).name
        path.write_bytes(data)
        path.chmod(mode)
        return path

    def read(self, name: str) -> bytes:
        return (self.directory / name).read_bytes()

    def run(self, scenario: Callable[[GridFTPClient], Awaitable[T]], *,
            timeout: float = CLIENT_TIMEOUT, guard: float = GUARD) -> T:
        """Run ``scenario`` with a new client (``timeout`` is its default) in a new event
        loop, and close the client afterwards."""
        return asyncio.run(self._with_client(scenario, timeout, guard))

    async def _with_client(self, scenario: Callable[[GridFTPClient], Awaitable[T]],
                           timeout: float, guard: float) -> T:
        client = make_client(self.backend, timeout=timeout)
        try:
            async with asyncio.timeout(guard) as deadline:
                return await scenario(client)
        except builtins.TimeoutError:
            if deadline.expired():
                raise AssertionError(f"the {self.backend} client did not finish within "
                                     f"{guard:.0f} s, its timeouts notwithstanding") from None
            raise
        finally:
            await asyncio.wait_for(client.close(), 30)


@contextmanager
def make_site(request: pytest.FixtureRequest, server: GridFTPServer, backend: str,
              root: Path) -> Iterator[Site]:
    """A :class:`Site` in a new directory under ``root``, removed afterwards; when the test
    fails, the end of the server's log is printed with it."""
    directory = Path(tempfile.mkdtemp(prefix="t-", dir=root))
    directory.chmod(0o777)
    failed_before = request.session.testsfailed
    try:
        yield Site(server, backend, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        if request.session.testsfailed > failed_before:
            print(f"---- end of the GridFTP server's log ({server.log_path}) ----")
            print(server.log_tail())


def random_bytes(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def assert_same_bytes(got: bytes, expected: bytes) -> None:
    """Equality with a short message (where they differ), not a diff of megabytes."""
    if got == expected:
        return
    first = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
                 min(len(got), len(expected)))
    raise AssertionError(f"got {len(got)} bytes, expected {len(expected)}; they differ from "
                         f"offset {first}")
