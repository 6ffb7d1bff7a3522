"""One claimed task, run in its own thread: modules as subprocesses, then the report.

The task's processes run in their own process groups so that a stop (SIGTERM to the pilot,
or the server withdrawing the claim) kills every process a module started. Resource use
comes from the kernel's accounting of each module (``wait4``), so it covers the module's
children too.
"""

from __future__ import annotations

import base64
import logging
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from iceprod_server.client import IceProdClient, RPCError
from iceprod_server.pilot.modules import (
    StagingError,
    data_entries,
    module_command,
    module_env,
    parameters,
    stage_in,
    stage_out,
)
from iceprod_server.pilot.spool import LogSpool, server_away

log = logging.getLogger("iceprod_pilot")

CONFLICT = -32004
# uploads keep the end of a log, where the error usually is
LOG_UPLOAD_MAX = 8 * 2**20
# seconds between SIGTERM and SIGKILL when a module is stopped
KILL_GRACE = 5.0


def _pack(text: str) -> str:
    """zlib + base64, as IceProd 2 pilots send logs."""
    return base64.b64encode(zlib.compress(text.encode("utf-8", "replace"))).decode("ascii")


def _read_tail(path: Path) -> str:
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            if size > LOG_UPLOAD_MAX:
                f.seek(size - LOG_UPLOAD_MAX)
                head = f"[... {size - LOG_UPLOAD_MAX} bytes left out ...]\n"
            else:
                head = ""
            return head + f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _iterations(tray: dict[str, Any]) -> int:
    value = tray.get("iterations")
    try:
        return max(1, int(value)) if value not in (None, "") else 1
    except (TypeError, ValueError) as e:
        raise ValueError(f"tray iterations must be a number, got {value!r}") from e


@dataclass
class Usage:
    """What the task's processes used, from the kernel's accounting of each module."""

    cpu_seconds: float = 0.0
    max_rss_kb: int = 0

    def add(self, rusage: Any) -> None:
        self.cpu_seconds += rusage.ru_utime + rusage.ru_stime
        self.max_rss_kb = max(self.max_rss_kb, int(rusage.ru_maxrss))


class TaskRun(threading.Thread):
    """Runs one claimed task to its end, then reports it (unless it was dropped)."""

    def __init__(self, desc: dict[str, Any], scratch_root: Path, hostname: str,
                 pilot_id: str, client: IceProdClient, on_done: Callable[[], None],
                 keep_scratch: bool = False, spool: LogSpool | None = None,
                 skip_class_modules: bool = False) -> None:
        # the dataset config itself, the task's options merged into its options
        self.config: dict[str, Any] = desc
        self.options: dict[str, Any] = desc.get("options") or {}
        self.task_id = str(self.options.get("task_id", ""))
        self.task_name = str(self.options.get("task", ""))
        self.claimed: dict[str, Any] = self.options.get("resources") or {}
        attempt = self.options.get("attempt")
        self.attempt = attempt if isinstance(attempt, int) else None
        super().__init__(name=f"task-{self.task_id}", daemon=True)
        self.dir = scratch_root / f"{self.task_id}.{self.options.get('attempt', 0)}"
        self.hostname = hostname
        self.pilot_id = pilot_id
        self.client = client
        self.on_done = on_done
        self.keep_scratch = keep_scratch
        self.skip_class_modules = skip_class_modules
        # IceTray class modules left out under --skip-class-modules, for the stats
        self.skipped: list[str] = []
        self.spool = spool
        self.usage = Usage()
        self.stdlog: list[str] = []
        self._cancel = threading.Event()
        self._stop_reason = ""
        self._dropped = False

    def note(self, fmt: str, *args: Any) -> None:
        text = fmt % args if args else fmt
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self.stdlog.append(f"{stamp} {text}")
        log.info("task %s: %s", self.task_id, text)

    def stop(self, reason: str) -> None:
        """Kill the task's processes; the task is reported as an error."""
        if not self._cancel.is_set():
            self._stop_reason = reason
            self._cancel.set()

    def drop(self, reason: str) -> None:
        """Kill the task's processes and report nothing: the claim is no longer ours."""
        self._dropped = True
        self.stop(reason)

    def run(self) -> None:
        started = time.monotonic()
        try:
            try:
                error = self._execute(started)
            except Exception as e:  # a bug or an odd config must still be reported
                log.exception("task %s", self.task_id)
                error = f"pilot error: {type(e).__name__}: {e}"
            if self._dropped:
                self.note("dropped without report: %s", self._stop_reason)
                return
            elapsed = time.monotonic() - started
            report = {"hostname": self.hostname, "time_used": round(elapsed, 3),
                      "resources": self._used(elapsed), "pilot_id": self.pilot_id}
            if self.skipped:
                report["skipped_class_modules"] = self.skipped
            self.note("finished: %s after %.1f s", error or "success", elapsed)
            self._upload_logs()
            try:
                if error is None:
                    self.client.call("finish_task", task_id=self.task_id, stats=report,
                                     attempt=self.attempt)
                else:
                    self.client.call("task_error", task_id=self.task_id,
                                     error_info={**report, "error": error},
                                     attempt=self.attempt)
            except RPCError as e:
                level = logging.WARNING if e.code == CONFLICT else logging.ERROR
                log.log(level, "task %s: report refused: %s", self.task_id, e)
        finally:
            if not self.keep_scratch:
                shutil.rmtree(self.dir, ignore_errors=True)
            self.on_done()

    def _used(self, elapsed: float) -> dict[str, Any]:
        return {"cpu": round(self.usage.cpu_seconds / elapsed, 3) if elapsed > 0 else 0.0,
                "gpu": self.claimed.get("gpu", 0),
                "memory": round(self.usage.max_rss_kb / 2**20, 4),
                "disk": round(_dir_size(self.dir) / 2**30, 4),
                "time": round(elapsed / 3600, 5)}

    def _find_task(self) -> dict[str, Any] | None:
        for task in self.config.get("tasks") or []:
            if isinstance(task, dict) and task.get("name") == self.task_name:
                return task
        return None

    def _execute(self, started: float) -> str | None:
        """Run the task's modules; None on success, else what went wrong."""
        self.dir.mkdir(parents=True, exist_ok=True)
        task = self._find_task()
        if task is None:
            return f"task {self.task_name!r} is not in the dataset config"
        # the pilot's own facts win over parameters of the same name
        values: dict[str, Any] = {
            **parameters(self.config, task),
            "job": self.options.get("job", 0), "dataset": self.options.get("dataset", 0),
            "jobs_submitted": self.options.get("jobs_submitted", 0),
            "dataset_id": self.options.get("dataset_id", ""), "task_id": self.task_id,
            "task": self.task_name, "iter": 0}
        hours = self.claimed.get("time")
        deadline = started + float(hours) * 3600 if isinstance(hours, int | float) and \
            hours > 0 else None
        self.note("task %s of dataset %s job %s, attempt %s, in %s", self.task_name,
                  values["dataset"], values["job"], self.options.get("attempt"), self.dir)
        entries = data_entries(task)
        try:
            for entry in entries:
                done = stage_in(entry, values, self.dir)
                if done:
                    self.note(done)
        except StagingError as e:
            return str(e)
        error = self._run_modules(task, values, deadline)
        if error:
            return error
        try:
            for entry in entries:
                done = stage_out(entry, values, self.dir)
                if done:
                    self.note(done)
        except StagingError as e:
            return str(e)
        return None

    def _run_modules(self, task: dict[str, Any], values: dict[str, Any],
                     deadline: float | None) -> str | None:
        with (self.dir / "stdout").open("ab") as out, (self.dir / "stderr").open("ab") as err:
            for t, tray in enumerate(task.get("trays") or []):
                tray_name = tray.get("name") or f"tray{t}"
                for it in range(_iterations(tray)):
                    values["iter"] = it
                    for m, module in enumerate(tray.get("modules") or []):
                        label = module.get("name") or f"{tray_name}/{m}"
                        if self._cancel.is_set():
                            return self._stop_reason
                        cmd = module_command(module, values)
                        if cmd is None:
                            error = self._class_module(label, module)
                            if error:
                                return error
                            continue
                        env = module_env(module, values, self.dir)
                        error = self._run_module(label, cmd, env, out, err, deadline)
                        if error:
                            return error
        return None

    def _class_module(self, label: str, module: dict[str, Any]) -> str | None:
        """A module without ``src``: an IceTray class (``running_class``) that only an
        IceTray environment (IceProd 2's own pilot) can run. Skipping it would report a
        task as complete that computed nothing, so that happens only on request."""
        running_class = str(module.get("running_class") or "").strip()
        if not running_class:
            self.note("module %s skipped: it has neither src nor running_class", label)
            return None
        if not self.skip_class_modules:
            return (f"module {label} needs an IceTray environment: it runs the class "
                    f"{running_class!r}, which this pilot cannot run (use IceProd 2's pilot, "
                    f"or --skip-class-modules to leave such modules out)")
        self.skipped.append(f"{label}: {running_class}")
        self.note("module %s NOT RUN: class %s needs an IceTray environment "
                  "(--skip-class-modules)", label, running_class)
        log.warning("task %s: module %s (class %s) NOT RUN because of --skip-class-modules; "
                    "the task's results do not include it", self.task_id, label,
                    running_class)
        return None

    def _run_module(self, label: str, cmd: list[str], env: dict[str, str], out: IO[bytes],
                    err: IO[bytes], deadline: float | None) -> str | None:
        self.note("module %s: %s", label, shlex.join(cmd))
        started = time.monotonic()
        try:
            proc = subprocess.Popen(cmd, cwd=self.dir, env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err, start_new_session=True)
        except OSError as e:
            err.write(f"cannot start {cmd[0]}: {e}\n".encode())
            err.flush()
            return f"module {label} could not start: {e.strerror or e}"
        pause = 0.005
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if self._cancel.is_set():
                status, rusage = self._kill(proc)
                self.usage.add(rusage)
                return self._stop_reason
            if deadline is not None and time.monotonic() > deadline:
                status, rusage = self._kill(proc)
                self.usage.add(rusage)
                return (f"resource overuse for time: module {label} still running after the "
                        f"task's {self.claimed.get('time')} h")
            self._cancel.wait(pause)
            pause = min(pause * 2, 0.25)
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        self.usage.add(rusage)
        self.note("module %s exited with code %d after %.1f s", label, code,
                  time.monotonic() - started)
        if code < 0:
            return f"module {label} was killed by signal {signal.Signals(-code).name}"
        if code != 0:
            return f"module {label} exited with code {code}"
        return None

    def _kill(self, proc: subprocess.Popen[bytes]) -> tuple[int, Any]:
        """SIGTERM the module's process group, SIGKILL it if it lingers; reap it."""
        self.note("killing module process %d: %s", proc.pid, self._stop_reason or "time")
        for sig, grace in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, None)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            end = time.monotonic() + (grace or 0)
            while grace is not None and time.monotonic() < end:
                pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    return status, rusage
                time.sleep(0.05)
        _pid, status, rusage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        return status, rusage

    def _upload_logs(self) -> None:
        logs = {"stdout": _read_tail(self.dir / "stdout"),
                "stderr": _read_tail(self.dir / "stderr"),
                "stdlog": "\n".join(self.stdlog) + "\n"}
        for name, text in logs.items():
            data = _pack(text)
            try:
                self.client.call("upload_logfile", task=self.task_id, name=name, data=data)
            except RPCError as e:
                if self.spool is not None and server_away(e):
                    self.spool.save(self.task_id, name, data)
                else:
                    log.warning("task %s: upload of %s failed: %s", self.task_id, name, e)
