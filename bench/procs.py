"""Processes and throwaway resources that a benchmark starts, and their clean-up.

Everything a benchmark creates (server processes, data directories, MariaDB databases) is
registered with a :class:`Cleanup` the moment it exists, so that an error or Ctrl-C at any
point still stops and removes it. Child processes run in their own session: a Ctrl-C in the
terminal reaches only this process, which then stops its children in order.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType, TracebackType

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


class BenchError(RuntimeError):
    """A benchmark could not run (a process did not start, a database is missing)."""


class Cleanup:
    """A stack of undo actions, run in reverse order on exit, whatever happened."""

    def __init__(self) -> None:
        self._actions: list[tuple[str, Callable[[], None]]] = []

    def push(self, what: str, action: Callable[[], None]) -> None:
        self._actions.append((what, action))

    def close(self) -> None:
        while self._actions:
            what, action = self._actions.pop()
            try:
                action()
            except Exception as e:  # keep cleaning up the rest
                print(f"  clean-up of {what} failed: {e}", file=sys.stderr)

    def __enter__(self) -> Cleanup:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def interrupt_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C, so that clean-up runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def temp_dir(cleanup: Cleanup, label: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"iceprod-bench-{label}-"))
    cleanup.push(f"directory {path}", lambda: shutil.rmtree(path, ignore_errors=True))
    return path


def server_command() -> list[str]:
    """``iceprod-server`` from the same virtualenv as this Python."""
    script = Path(sys.executable).parent / "iceprod-server"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "iceprod_server.cli"]


def run_cli(args: Sequence[str], env: dict[str, str] | None = None,
            stdin: str | None = None) -> str:
    """Run an ``iceprod-server`` subcommand to completion and return its standard output."""
    proc = subprocess.run([*server_command(), *args], capture_output=True, text=True,
                          input=stdin, env=env, timeout=300, check=False, cwd=REPO)
    if proc.returncode != 0:
        raise BenchError(f"iceprod-server {args[0]} failed ({proc.returncode}): "
                         f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


class Process:
    """A child process with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.popen = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=env, cwd=REPO,
                                      start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, url: str, timeout: float = 60.0) -> None:
        """Poll ``url`` until it answers 200; fail early if the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.popen.returncode}:\n"
                                 f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise BenchError(f"{self.name} not ready at {url} after {timeout:.0f} s:\n"
                         f"{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._log.close()

    def alive(self) -> bool:
        return self.popen.poll() is None


def start_server(cleanup: Cleanup, data_dir: Path, env_overrides: dict[str, str],
                 name: str = "iceprod-server",
                 extra_args: Sequence[str] = ()) -> tuple[Process, str]:
    """``iceprod-server serve`` on a free loopback port; returns it and its base URL."""
    port = free_port()
    env = dict(os.environ)
    # no access log: the bare Tornado baseline writes none either
    env.update({"ICEPROD_LOG_LEVEL": "WARNING", **env_overrides})
    argv = [*server_command(), "serve", "--data-dir", str(data_dir), "--host", HOST,
            "--port", str(port), *extra_args]
    proc = Process(name, argv, data_dir / "server.log", env)
    cleanup.push(f"{name} (pid {proc.pid})", proc.stop)
    base = f"http://{HOST}:{port}"
    proc.wait_ready(base + "/healthz")
    return proc, base


def start_hello(cleanup: Cleanup, log_dir: Path) -> tuple[Process, str]:
    """The bare Tornado hello-world baseline (:mod:`bench.hello`)."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.hello", "--port", str(port)]
    proc = Process("hello-world", argv, log_dir / "hello.log")
    cleanup.push(f"hello-world (pid {proc.pid})", proc.stop)
    base = f"http://{HOST}:{port}"
    proc.wait_ready(base + "/")
    return proc, base
