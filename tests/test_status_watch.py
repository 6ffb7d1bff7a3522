"""``iceprod-server status --watch DATASET`` against a real server while a pilot completes
the dataset: it follows the progress, exits 0 once the dataset is complete, and its last
state shows every bar at 100%. Watching a dataset that does not exist fails at once.

The watcher runs on a pseudo-terminal, as an operator runs it (on a pipe it prints only
the final state); the pilot starts only once the watcher has shown the dataset at 0%, so
the test sees it follow the progress from the start."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from tests.support.datasets import config, module, submit, task
from tests.support.servers import ICEPROD_PILOT, ICEPROD_SERVER, clean_environ, iceprod_server

NJOBS = 12


def _slow_task(name: str, depends: list[str] | None = None) -> dict[str, Any]:
    # long enough that the watcher sees the dataset unfinished at first
    return task(name, depends=depends,
                requirements={"cpu": 1, "memory": 0.1, "disk": 0.1, "time": 0.1},
                modules=[module(name, args=["-c", "import time; time.sleep(0.3)"])])


def test_watch_follows_a_dataset_to_complete(server: Any, sqlite_url: str,
                                             tmp_path: Path) -> None:
    srv = server(sqlite_url)
    user_key = srv.deployment.passkey("user", "alice")
    pilot_key = srv.deployment.passkey("pilot")
    dataset_id = submit(srv.client(user_key),
                        config(_slow_task("generate"), _slow_task("process", ["generate"])),
                        njobs=NJOBS, description="watched")

    total = 2 * NJOBS
    screen = Terminal()
    watcher = subprocess.Popen(
        [ICEPROD_SERVER, "status", "--url", srv.url, "--watch", dataset_id,
         "--interval", "0.5"],
        stdin=subprocess.DEVNULL, stdout=screen.slave, stderr=subprocess.PIPE, text=True,
        env=clean_environ({"COLUMNS": "160", "TERM": "xterm"}))
    screen.start()
    try:
        screen.wait_for(rf"\bdataset\b.*\b0/{total}\s+0%")
    except AssertionError:
        watcher.kill()
        raise
    pilot_log = (tmp_path / "pilot.log").open("wb")
    pilot = subprocess.Popen(
        [ICEPROD_PILOT, "--url", srv.url, "--passkey", pilot_key, "--exit-when-idle", "5",
         "--cpu", "2", "--memory", "2", "--disk", "5", "--time", "1",
         "--poll-interval", "1", "--heartbeat", "5", "--scratch", str(tmp_path / "scratch")],
        stdin=subprocess.DEVNULL, stdout=pilot_log, stderr=subprocess.STDOUT,
        env=clean_environ())
    try:
        _, err = watcher.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        watcher.kill()
        _, err = watcher.communicate()
        out = screen.finish()
        raise AssertionError(f"status --watch did not exit when the dataset completed\n"
                             f"stdout:\n{out}\nstderr:\n{err}") from None
    finally:
        try:
            pilot.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pilot.kill()
        pilot_log.close()

    out = screen.finish()
    assert watcher.returncode == 0, f"exit {watcher.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    for label in ("generate", "process"):
        assert re.search(rf"\b{label}\b.*\b{NJOBS}/{NJOBS}\s+100%", out), out[-3000:]
    assert re.search(rf"\bdataset\b.*\b{total}/{total}\s+100%", out), out[-3000:]
    assert f"dataset {dataset_id} is complete" in out, out[-3000:]
    # between 0% and 100% it showed the dataset partly done
    partial = {int(n) for n in re.findall(rf"\bdataset\b[^\n]*?\b(\d+)/{total}\s+\d+%", out)}
    assert partial & set(range(1, total)), f"no frame between 0 and {total}: {sorted(partial)}"


class Terminal:
    """A pseudo-terminal whose output is collected, with escape sequences removed."""

    _ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        self._chunks: list[bytes] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)

    def start(self) -> None:
        os.close(self.slave)  # the child holds it; EOF comes when the child exits
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the child closed its end
                return
            if not data:
                return
            with self._lock:
                self._chunks.append(data)

    def text(self) -> str:
        with self._lock:
            raw = b"".join(self._chunks).decode("utf-8", "replace")
        return self._ESCAPES.sub("", raw).replace("\r", "\n")

    def wait_for(self, pattern: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.text()):
            if time.monotonic() > deadline:
                raise AssertionError(f"the watcher never showed {pattern!r}:\n"
                                     f"{self.text()[-3000:]}")
            time.sleep(0.05)

    def finish(self) -> str:
        self._reader.join(timeout=10)
        os.close(self.master)
        return self.text()


def test_watch_of_an_unknown_dataset_fails_at_once(server: Any, sqlite_url: str) -> None:
    srv = server(sqlite_url)
    proc = iceprod_server("status", "--url", srv.url, "--watch", "nosuchdataset",
                          check=False, timeout=30)
    assert proc.returncode == 1, proc
    assert "-32003" in proc.stderr and "nosuchdataset" in proc.stderr, proc.stderr
