"""A master and its client sites as real server processes, each with its own database,
joined with the commands an operator uses (``add-site`` at the master, ``join`` at the
client), and reference pilots (``iceprod-pilot``) at the clients."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.servers import (
    ICEPROD_PILOT,
    Deployment,
    ServerProcess,
    clean_environ,
    start_server,
    stop_process,
)

# the link runs often, so that tests wait on events, not on the link's pace
CLIENT_ENV = {"ICEPROD_SITE_INTERVAL": "0.3", "ICEPROD_SITE_THRESHOLD": "4",
              "ICEPROD_SITE_PULL": "8"}


@dataclass
class Site:
    name: str
    site_id: str
    key: str
    deployment: Deployment
    server: ServerProcess | None = None
    pilots: list[subprocess.Popen[bytes]] = field(default_factory=list)


def add_site(master: Deployment, name: str) -> tuple[str, str]:
    out = master.cli("add-site", name).stdout
    values = dict(line.split("=", 1) for line in out.split() if "=" in line)
    return values["site_id"], values["site_key"]


def make_site(master: ServerProcess, name: str, data_dir: Path, db_url: str,
              master_url: str | None = None) -> Site:
    """Register ``name`` at the master, init its data directory and join (through
    ``master_url``, by default the master's own)."""
    site_id, key = add_site(master.deployment, name)
    deployment = Deployment.init(data_dir, db_url)
    deployment.cli("join", "--master", master_url or master.url, "--site-id", site_id,
                   "--key", key)
    return Site(name, site_id, key, deployment)


def start_site(site: Site, log_dir: Path, env: dict[str, str] | None = None,
               port: int | None = None, extra_args: tuple[str, ...] = ()) -> ServerProcess:
    site.server = start_server(site.deployment, log_dir, {**CLIENT_ENV, **(env or {})},
                               port=port, extra_args=extra_args)
    return site.server


def start_pilots(site: Site, count: int, log_dir: Path, heartbeat: float = 5.0,
                 cpu: int = 2) -> None:
    """``count`` reference pilots at the site, with a pilot key issued there."""
    assert site.server is not None
    key = site.deployment.passkey("pilot")
    log_dir.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        log = (log_dir / f"pilot-{site.name}-{len(site.pilots)}.log").open("wb")
        site.pilots.append(subprocess.Popen(
            [ICEPROD_PILOT, "--url", site.server.url, "--passkey", key,
             "--cpu", str(cpu), "--memory", "4", "--disk", "5", "--time", "1",
             "--poll-interval", "0.5", "--heartbeat", str(heartbeat),
             "--hostname", f"{site.name}-node{i}", "--scratch", str(log_dir / "scratch")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=clean_environ()))


def stop_site(site: Site) -> None:
    for proc in site.pilots:
        stop_process(proc)
    site.pilots = []
    if site.server is not None:
        site.server.stop()


def quick_config(*names: str, stdout: str = "done", seconds: float = 0.0) -> dict[str, Any]:
    """Tasks that print ``stdout`` and end after ``seconds``, each after the one before."""
    from tests.support.datasets import config, module, task

    tasks = []
    for i, name in enumerate(names):
        tasks.append(task(name, depends=[names[i - 1]] if i else [],
                          requirements={"cpu": 1, "memory": 0.5, "disk": 0.1, "time": 0.1},
                          modules=[module(name, "python3",
                                          ["-c", f"import time; time.sleep({seconds}); "
                                           f"print('{stdout} ' + '{name}')"])]))
    return config(*tasks)


class Cable:
    """A TCP forwarder on 127.0.0.1 between a client site and its master that a test can
    cut (every connection through it is closed and new ones are refused) and mend."""

    def __init__(self, target_port: int) -> None:
        import socket
        import threading

        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._cut = False
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        import socket
        import threading

        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                cut = self._cut
            if cut:
                conn.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), 5)
            except OSError:
                conn.close()
                continue
            with self._lock:
                self._open += [conn, upstream]
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: Any, dst: Any) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self) -> None:
        import socket

        with self._lock:
            self._cut = True
            conns, self._open = self._open, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass

    def mend(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()
