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


def make_site(master: ServerProcess, name: str, data_dir: Path, db_url: str) -> Site:
    """Register ``name`` at the master, init its data directory and join."""
    site_id, key = add_site(master.deployment, name)
    deployment = Deployment.init(data_dir, db_url)
    deployment.cli("join", "--master", master.url, "--site-id", site_id, "--key", key)
    return Site(name, site_id, key, deployment)


def start_site(site: Site, log_dir: Path, env: dict[str, str] | None = None,
               port: int | None = None) -> ServerProcess:
    site.server = start_server(site.deployment, log_dir, {**CLIENT_ENV, **(env or {})},
                               port=port)
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


def quick_config(*names: str, stdout: str = "done") -> dict[str, Any]:
    """Tasks that print ``stdout`` and end at once, each after the one before it."""
    from tests.support.datasets import config, module, task

    tasks = []
    for i, name in enumerate(names):
        tasks.append(task(name, depends=[names[i - 1]] if i else [],
                          requirements={"cpu": 1, "memory": 0.5, "disk": 0.1, "time": 0.1},
                          modules=[module(name, "python3",
                                          ["-c", f"print('{stdout} ' + '{name}')"])]))
    return config(*tasks)
