"""The pilot's main loop and its command line (``iceprod-pilot``).

The loop offers what is free with ``new_task`` (polling faster right after work and backing
off while idle), starts a :class:`~iceprod_server.pilot.task.TaskRun` for every task it
gets, and a heartbeat thread keeps each claim alive with ``stillrunning`` and tells the
server the pilot's state with ``update_pilot``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from iceprod_server.client import IceProdClient, RPCError
from iceprod_server.pilot.spool import LogSpool
from iceprod_server.pilot.task import TaskRun

log = logging.getLogger("iceprod_pilot")

NOT_FOUND, CONFLICT, METHOD_NOT_FOUND = -32003, -32004, -32601
FATAL = {-32001: "the server refused the passkey", -32002: "the passkey may not run tasks",
         METHOD_NOT_FOUND: "the server does not speak the pilot protocol"}


@dataclass(frozen=True)
class Resources:
    """cpu and gpu counts, memory and disk in GB, time in hours."""

    cpu: int
    gpu: int
    memory: float
    disk: float
    time: float

    def minus(self, other: Resources) -> Resources:
        return Resources(self.cpu - other.cpu, self.gpu - other.gpu,
                         self.memory - other.memory, self.disk - other.disk, self.time)

    def plus(self, other: Resources) -> Resources:
        return Resources(self.cpu + other.cpu, self.gpu + other.gpu,
                         self.memory + other.memory, self.disk + other.disk, self.time)

    @classmethod
    def zero(cls) -> Resources:
        return cls(0, 0, 0.0, 0.0, 0.0)

    @classmethod
    def from_claim(cls, claimed: dict[str, Any]) -> Resources:
        def num(key: str, default: float) -> float:
            value = claimed.get(key, default)
            return float(value) if isinstance(value, int | float) else default

        return cls(int(num("cpu", 1)), int(num("gpu", 0)), num("memory", 0.0),
                   num("disk", 0.0), num("time", 0.0))

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return 4.0


def _default_os() -> str:
    """IceProd's platform names look like ``RHEL_7_x86_64``."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            key, _, value = line.partition("=")
            fields[key] = value.strip().strip('"')
    except OSError:
        pass
    name = fields.get("ID", sys.platform).upper()
    version = fields.get("VERSION_ID", "").split(".")[0]
    return "_".join(p for p in (name, version, os.uname().machine) if p)


# IceProd expressions the pilot itself can fill in; others are left as written
class Pilot:
    def __init__(self, client: IceProdClient, args: argparse.Namespace, pilot_id: str) -> None:
        self.client = client
        self.args = args
        self.pilot_id = pilot_id
        self.hostname = args.hostname or socket.getfqdn()
        self.scratch = Path(args.scratch or tempfile.mkdtemp(prefix="iceprod-pilot-"))
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.total = Resources(
            cpu=args.cpu or os.cpu_count() or 1, gpu=args.gpu,
            memory=args.memory if args.memory is not None else _memory_gb(),
            disk=(args.disk if args.disk is not None
                  else shutil.disk_usage(self.scratch).free / 2**30),
            time=args.time)
        self.started = time.monotonic()
        self.stopping = threading.Event()
        self.wakeup = threading.Event()
        self.lock = threading.Lock()
        self.runs: dict[str, TaskRun] = {}
        self.tasks_started = 0
        self.failed = False
        self._update_pilot = True
        self.spool = LogSpool(Path(args.log_spool) if args.log_spool
                              else self.scratch / "log-spool")

    # -- resources

    def claimed(self) -> Resources:
        with self.lock:
            runs = list(self.runs.values())
        total = Resources.zero()
        for run in runs:
            total = total.plus(Resources.from_claim(run.claimed))
        return total

    def offer(self) -> Resources:
        left_hours = self.total.time - (time.monotonic() - self.started) / 3600
        free = self.total.minus(self.claimed())
        return Resources(free.cpu, free.gpu, free.memory, free.disk, max(0.0, left_hours))

    # -- main loop

    def run(self) -> int:
        log.info("pilot %s on %s offers %s; scratch %s", self.pilot_id, self.hostname,
                 self.total.as_dict(), self.scratch)
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="heartbeat",
                                     daemon=True)
        heartbeat.start()
        idle_since = time.monotonic()
        delay = 0.5
        while not self.stopping.is_set():
            self.spool.flush(self.client.call)
            if self._reap() or self.runs:
                idle_since = time.monotonic()
            limit = self.args.max_tasks
            if limit is not None and self.tasks_started >= limit and not self.runs:
                log.info("ran %d tasks (--max-tasks); exiting", self.tasks_started)
                break
            got = self._claim() if self._may_claim() else 0
            if got:
                delay = 0.5
                continue
            if not self.runs and self.args.exit_when_idle is not None:
                idle = time.monotonic() - idle_since
                if idle >= self.args.exit_when_idle:
                    log.info("no task for %.0f s (--exit-when-idle); exiting", idle)
                    break
                delay = min(delay, max(0.05, self.args.exit_when_idle - idle))
            if not self.runs and self.offer().time <= 0:
                log.info("pilot lifetime (--time) used up; exiting")
                break
            self.wakeup.wait(delay)
            if self.wakeup.is_set():
                self.wakeup.clear()
                delay = 0.5
            else:
                delay = min(delay * 1.5, self.args.poll_interval)
        self._shutdown()
        return 1 if self.failed else 0

    def _may_claim(self) -> bool:
        limit = self.args.max_tasks
        if limit is not None and self.tasks_started >= limit:
            return False
        offer = self.offer()
        return offer.cpu >= 1 and offer.time > 0 and offer.memory > 0 and offer.disk > 0

    def _claim(self) -> int:
        offer = self.offer()
        try:
            tasks = self.client.call(
                "new_task", gridspec=self.args.gridspec, hostname=self.hostname, domain="",
                ifaces=[], os=self.args.os, cpu=offer.cpu, gpu=offer.gpu,
                memory=round(offer.memory, 3), disk=round(offer.disk, 3),
                time=round(offer.time, 3))
        except RPCError as e:
            if e.code in FATAL:
                log.error("%s (%s); exiting", FATAL[e.code], e)
                self.failed = True
                self.stopping.set()
            else:
                log.warning("new_task failed: %s", e)
            return 0
        if isinstance(tasks, dict):  # an IceProd 2 server answers with one task
            tasks = [tasks]
        if not isinstance(tasks, list):
            return 0
        limit = self.args.max_tasks
        for desc in tasks:
            if self.stopping.is_set() or (limit is not None and self.tasks_started >= limit):
                # stopped during the call, or got more than --max-tasks allows: hand the
                # task back now rather than let its lease run out
                self._give_back(desc)
                continue
            run = TaskRun(desc, self.scratch, self.hostname, self.pilot_id, self.client,
                          on_done=self.wakeup.set, keep_scratch=self.args.keep_scratch,
                          skip_class_modules=self.args.skip_class_modules,
                          spool=self.spool)
            with self.lock:
                self.runs[run.task_id] = run
            self.tasks_started += 1
            log.info("task %s (%s, dataset %s, job %s) started", run.task_id, run.task_name,
                     run.options.get("dataset"), run.options.get("job"))
            run.start()
            self._confirm(run)
        return len(tasks)

    def _confirm(self, run: TaskRun) -> None:
        """Tell the server at once that the claim arrived: until then it holds the task
        only for its short first-contact time (a claim whose answer was lost in a crash
        goes back to the queue)."""
        try:
            if self.client.call("stillrunning", task_id=run.task_id,
                                attempt=run.attempt) is False:
                run.drop("server says the task is no longer ours")
        except RPCError as e:
            log.warning("stillrunning(%s) failed: %s", run.task_id, e)

    def _give_back(self, desc: dict[str, Any]) -> None:
        options = desc.get("options") or {}
        task_id = str(options.get("task_id", ""))
        try:
            self.client.call("task_error", task_id=task_id, attempt=options.get("attempt"),
                             error_info={"hostname": self.hostname, "time_used": 0,
                                         "error": "pilot stopped", "resources": {}})
        except RPCError as e:
            log.warning("could not give back task %s: %s", task_id, e)

    def _reap(self) -> int:
        """Forget the runs that ended; returns how many did."""
        with self.lock:
            ended = [task_id for task_id, run in self.runs.items() if not run.is_alive()]
            for task_id in ended:
                del self.runs[task_id]
        return len(ended)

    # -- heartbeat

    def _heartbeat_loop(self) -> None:
        while not self.stopping.wait(self.args.heartbeat):
            self.heartbeat()

    def heartbeat(self) -> None:
        with self.lock:
            runs = [r for r in self.runs.values() if r.is_alive()]
        for run in runs:
            try:
                alive = self.client.call("stillrunning", task_id=run.task_id,
                                         attempt=run.attempt)
            except RPCError as e:
                if e.code in (CONFLICT, NOT_FOUND):
                    run.drop(f"server withdrew the claim: {e.reason}")
                else:
                    log.warning("stillrunning(%s) failed: %s", run.task_id, e)
                continue
            if alive is False:
                run.drop("server says the task is no longer ours")
        if self._update_pilot:
            claimed = self.claimed()
            try:
                self.client.call("update_pilot", pilot_id=self.pilot_id,
                                 hostname=self.hostname, tasks=[r.task_id for r in runs],
                                 resources_available=self.total.minus(claimed).as_dict(),
                                 resources_claimed=claimed.as_dict())
            except RPCError as e:
                if e.code == METHOD_NOT_FOUND:
                    self._update_pilot = False
                else:
                    log.warning("update_pilot failed: %s", e)

    # -- stopping

    def stop(self, reason: str) -> None:
        if self.stopping.is_set():
            return
        log.info("%s: stopping %d running tasks", reason, len(self.runs))
        self.stopping.set()
        self.wakeup.set()
        with self.lock:
            for run in self.runs.values():
                run.stop("pilot stopped")

    def _shutdown(self) -> None:
        self.stopping.set()
        with self.lock:
            runs = list(self.runs.values())
        for run in runs:
            run.stop("pilot stopped")
        for run in runs:
            run.join()
        self.spool.flush(self.client.call)
        left = self.spool.pending()
        if left:
            log.warning("%d logs the server never took are in %s", len(left),
                        self.spool.directory)
        if not self.args.scratch and not self.args.keep_scratch and not left:
            shutil.rmtree(self.scratch, ignore_errors=True)
        log.info("pilot %s done: %d tasks started", self.pilot_id, self.tasks_started)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iceprod-pilot", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Ask an IceProd server for tasks, run them, and report back. Stops "
                    "cleanly on SIGTERM or SIGINT (running tasks are reported as errors).",
        epilog="examples:\n"
               "  iceprod-pilot --url http://127.0.0.1:8080 --passkey $KEY --exit-when-idle 30\n"
               "  iceprod-pilot --url https://iceprod.example.org --passkey $KEY --cpu 8 \\\n"
               "      --gpu 1 --memory 32 --disk 200 --time 48 --scratch /scratch/pilot")
    env_key = os.environ.get("ICEPROD_PASSKEY")
    parser.add_argument("--url", default=os.environ.get("ICEPROD_URL"),
                        required="ICEPROD_URL" not in os.environ,
                        help="server base URL, http://HOST:PORT (default: $ICEPROD_URL)")
    parser.add_argument("--passkey", default=env_key, required=not env_key,
                        help="pilot passkey (default: $ICEPROD_PASSKEY)")
    parser.add_argument("--exit-when-idle", type=float, metavar="SECONDS",
                        help="exit after this long without a task (default: run until "
                             "stopped)")
    parser.add_argument("--cpu", type=int, help="cores to offer (default: all)")
    parser.add_argument("--gpu", type=int, default=0, help="GPUs to offer (default 0)")
    parser.add_argument("--memory", type=float, metavar="GB",
                        help="memory to offer (default: all)")
    parser.add_argument("--disk", type=float, metavar="GB",
                        help="scratch disk to offer (default: free space)")
    parser.add_argument("--time", type=float, default=24.0, metavar="HOURS",
                        help="pilot lifetime; tasks must fit in what is left (default 24)")
    parser.add_argument("--os", default=_default_os(),
                        help="platform offered to tasks with an os requirement "
                             "(default: %(default)s)")
    parser.add_argument("--gridspec", default="", help="grid this pilot belongs to")
    parser.add_argument("--scratch", metavar="DIR",
                        help="directory for task scratch dirs (default: a temporary dir)")
    parser.add_argument("--keep-scratch", action="store_true",
                        help="keep each task's scratch dir after it ends")
    parser.add_argument("--skip-class-modules", action="store_true",
                        help="leave out modules that name an IceTray running_class and no "
                             "src, instead of reporting their task as an error; each one "
                             "left out is logged and listed in the attempt's stats "
                             "(skipped_class_modules)")
    parser.add_argument("--log-spool", metavar="DIR",
                        help="where task logs wait while the server is away, to be sent "
                             "when it is back (default: SCRATCH/log-spool)")
    parser.add_argument("--hostname", help="host name reported to the server")
    parser.add_argument("--max-tasks", type=int, metavar="N", help="exit after N tasks")
    parser.add_argument("--heartbeat", type=float, default=60.0, metavar="SECONDS",
                        help="stillrunning interval; at most a third of the passkey's "
                             "lease (default 60)")
    parser.add_argument("--poll-interval", type=float, default=10.0, metavar="SECONDS",
                        help="longest wait between new_task calls while idle (default 10)")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                        help="timeout of each request to the server (default 60)")
    parser.add_argument("--retries", type=int, default=5, metavar="N",
                        help="times a call is repeated, with backoff, while the server does "
                             "not answer (default 5); logs that still could not be sent "
                             "wait in --log-spool")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO or WARNING")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    level = logging.getLevelName(args.log_level.upper())
    logging.basicConfig(level=level if isinstance(level, int) else logging.INFO,
                        stream=sys.stderr,
                        format="%(asctime)s %(levelname)s pilot: %(message)s")
    if args.skip_class_modules:
        log.warning("--skip-class-modules: modules that need an IceTray environment will NOT "
                    "run; their tasks can complete without the work those modules do")
    for name in ("cpu", "gpu", "max_tasks"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "gpu" else 1):
            print(f"iceprod-pilot: error: --{name.replace('_', '-')} is too small",
                  file=sys.stderr)
            sys.exit(2)
    pilot_id = str(uuid.uuid4())
    try:
        client = IceProdClient(args.url, passkey=args.passkey, timeout=args.timeout,
                               pilot_ref=pilot_id, retries=args.retries)
    except ValueError as e:
        print(f"iceprod-pilot: error: {e}", file=sys.stderr)
        sys.exit(2)
    pilot = Pilot(client, args, pilot_id)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        pilot.stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sys.exit(pilot.run())


if __name__ == "__main__":
    main()

