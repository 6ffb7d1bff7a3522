"""Real server processes for tests, driven through the installed command line.

A :class:`Deployment` is a data directory bound to a database (``iceprod-server init``); it
issues passkeys and adds users with the same commands an operator uses. A
:class:`ServerProcess` is one ``iceprod-server serve`` on an unused port of 127.0.0.1.
Several processes may serve one deployment (one database).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iceprod_server.client import IceProdClient

BIN = Path(sys.executable).parent
ICEPROD_SERVER = str(BIN / "iceprod-server")
ICEPROD_PILOT = str(BIN / "iceprod-pilot")

START_TIMEOUT = 30.0
PASSWORD = "correct-horse-battery"
# what every test server runs with unless the test says otherwise: a scheduler fast enough
# that a test never waits seconds for the queue
DEFAULT_ENV = {
    "ICEPROD_SCHEDULER_INTERVAL": "0.5",
    "ICEPROD_LOG_LEVEL": "INFO",
    # a failed task is queued again at once (tests of the back-off set their own)
    "ICEPROD_RETRY_DELAY_SECONDS": "0",
    # no graph points written on the clock, so that tests comparing a database before and
    # after a refused call see only what calls did (the graph tests set their own)
    "ICEPROD_GRAPH_INTERVAL": "0",
}


class CommandFailed(AssertionError):
    pass


def clean_environ(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child process: ours without any ICEPROD_* option that the
    person running the tests may have set, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ICEPROD_") or k.startswith("ICEPROD_TEST_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_command(argv: list[str], input: str | None = None, env: dict[str, str] | None = None,
                timeout: float = 120.0, check: bool = True,
                cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command line to completion; with ``check``, a failure shows its output."""
    try:
        proc = subprocess.run(argv, input=input if input is not None else "",
                              capture_output=True, text=True, env=clean_environ(env),
                              timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired as e:
        raise CommandFailed(f"`{' '.join(argv)}` did not finish in {timeout} s\n"
                            f"stdout:\n{e.stdout!r}\nstderr:\n{e.stderr!r}") from e
    if check and proc.returncode != 0:
        raise CommandFailed(f"`{' '.join(argv)}` exited with {proc.returncode}\n"
                            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def iceprod_server(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return run_command([ICEPROD_SERVER, *args], **kwargs)


def unused_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL if the process has not ended within 15 seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def rss_kib(pid: int) -> int:
    """The resident memory of process ``pid`` in KiB, as the kernel reports it."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


@dataclass
class Deployment:
    """A data directory and its database, made with ``iceprod-server init``."""

    data_dir: Path
    db_url: str
    _users: dict[str, str] = field(default_factory=dict)

    @classmethod
    def init(cls, data_dir: Path, db_url: str) -> Deployment:
        iceprod_server("init", "--data-dir", str(data_dir), "--db-url", db_url)
        return cls(data_dir, db_url)

    def cli(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """``iceprod-server SUBCOMMAND... --data-dir DIR``."""
        return iceprod_server(*args, "--data-dir", str(self.data_dir), **kwargs)

    def add_user(self, name: str, admin: bool = False, password: str = PASSWORD) -> str:
        if name not in self._users:
            extra = ["--admin"] if admin else []
            self.cli("add-user", name, *extra, "--password-stdin", input=password + "\n")
            self._users[name] = password
        return name

    def passkey(self, role: str, user: str | None = None,
                expires: float | None = None, lease: float | None = None) -> str:
        """Issue a passkey; a user or admin key is bound to ``user`` (made if needed);
        ``lease``: the key's own task lease in seconds."""
        args = ["passkey", "issue", "--role", role]
        if role in ("user", "admin"):
            user = user or f"{role}1"
            self.add_user(user, admin=(role == "admin"))
        if user:
            args += ["--user", user]
        if expires is not None:
            args += ["--expires", str(expires)]
        if lease is not None:
            args += ["--lease", str(lease)]
        out = self.cli(*args).stdout.strip()
        assert out and len(out.split()) == 1, f"passkey issue printed more than a key: {out!r}"
        return out

    def revoke(self, key: str) -> None:
        self.cli("passkey", "revoke", "--key", key)


@dataclass
class ServerProcess:
    deployment: Deployment
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def rpc_url(self) -> str:
        return self.url + "/jsonrpc"

    @property
    def db_url(self) -> str:
        return self.deployment.db_url

    @property
    def data_dir(self) -> Path:
        return self.deployment.data_dir

    def client(self, passkey: str | None = None, pilot_ref: str | None = None,
               timeout: float = 60.0, retries: int = 5) -> IceProdClient:
        return IceProdClient(self.url, passkey=passkey, timeout=timeout, retries=retries,
                             pilot_ref=pilot_ref)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def scheduler_passes(self) -> int:
        """The scheduler passes this process has finished (from ``GET /healthz``)."""
        status, body = http_get(self.port, "/healthz")
        assert status == 200, (status, body)
        return int(json.loads(body)["scheduler_passes"])

    def wait_scheduler_passes(self, n: int = 2, timeout: float = 30.0) -> None:
        """Wait until ``n`` more scheduler passes have finished; with n >= 2, at least one
        whole pass began after this call, so whatever it would move has moved."""
        target = self.scheduler_passes() + n
        deadline = time.monotonic() + timeout
        while (seen := self.scheduler_passes()) < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"the scheduler made {seen - target + n} of {n} passes "
                                     f"in {timeout} s")
            time.sleep(0.05)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"iceprod-server serve exited with {self.proc.returncode} before it was "
                    f"ready; its log:\n{self.log_text()[-6000:]}")
            try:
                status, _ = http_get(self.port, "/healthz", timeout=2)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"GET /healthz did not answer 200 within {timeout} s; the "
                             f"server's log:\n{self.log_text()[-6000:]}")

    def stop(self) -> None:
        stop_process(self.proc)


def start_server(deployment: Deployment, log_dir: Path, env: dict[str, str] | None = None,
                 port: int | None = None, extra_args: tuple[str, ...] = (),
                 wait: bool = True, port_flag: bool = True) -> ServerProcess:
    """``iceprod-server serve`` for ``deployment``, waiting for ``GET /healthz`` == 200.

    Without ``port_flag`` the server chooses its port from its config, which must be
    ``port``, the port to wait on.
    """
    port = port or unused_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"server-{port}.log"
    port_args = ["--port", str(port)] if port_flag else []
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [ICEPROD_SERVER, "serve", "--data-dir", str(deployment.data_dir),
             *port_args, *extra_args],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=clean_environ({**DEFAULT_ENV, **(env or {})}))
    server = ServerProcess(deployment, port, proc, log_path)
    if wait:
        server.wait_ready()
    return server


def start_pilot(url: str, key: str, directory: Path, name: str, *args: str,
                env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], Path]:
    """An ``iceprod-pilot`` process called ``name`` (its hostname), with its scratch
    directory and its log (the returned path) in ``directory``; ``args`` are more options,
    such as ``--exit-when-idle 6``."""
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [ICEPROD_PILOT, "--url", url, "--passkey", key, "--hostname", name,
             "--scratch", str(directory / f"scratch-{name}"), *args],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=clean_environ(env))
    return proc, log_path


def wait_pilots(pilots: list[tuple[subprocess.Popen[bytes], Path]],
                timeout: float = 300.0) -> None:
    """Wait for pilots started with ``--exit-when-idle`` to exit 0; fail with the log of
    one that does not."""
    for proc, log_path in pilots:
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"iceprod-pilot did not exit when idle:\n"
                                 f"{log_path.read_text()[-4000:]}") from None
        assert code == 0, f"iceprod-pilot exited with {code}:\n{log_path.read_text()[-4000:]}"
