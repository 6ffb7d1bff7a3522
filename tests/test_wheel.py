"""The wheel: ``python -m build`` makes one with the templates, static files and migrations;
``pip install`` of it into a fresh virtualenv gives commands that init a data directory,
serve pages and JSON-RPC, and run a dataset with the pilot, outside the source tree."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from tests.support.datasets import REPO, config
from tests.support.servers import clean_environ, http_get, stop_process, unused_port


def run(argv: list[str], cwd: Path, timeout: float = 600.0, **kw: object) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=clean_environ(), check=False, **kw)  # type: ignore[call-overload]
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return str(proc.stdout)


def test_wheel_installs_and_runs_a_dataset(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(REPO)],
        cwd=tmp_path)
    wheels = list(dist.glob("iceprod_server-*.whl"))
    assert len(wheels) == 1, wheels
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    for needed in ("iceprod_server/templates/base.html", "iceprod_server/static/iceprod.css",
                   "iceprod_server/schema/dataset_config.schema.json",
                   "iceprod_server/db/migrations/env.py",
                   "iceprod_server/db/migrations/versions/0001_initial.py"):
        assert needed in names, f"{needed} is not in the wheel"

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    run([str(venv / "bin" / "pip"), "install", "-q", str(wheels[0])], cwd=tmp_path)
    server_cmd = str(venv / "bin" / "iceprod-server")
    assert run([server_cmd, "--version"], cwd=tmp_path).startswith("iceprod-server ")

    # everything below runs outside the source tree, from the installed package only
    work = tmp_path / "elsewhere"
    work.mkdir()
    data = work / "var"
    run([server_cmd, "init", "--data-dir", str(data)], cwd=work)
    run([server_cmd, "add-user", "admin", "--admin", "--password-stdin", "--data-dir",
         str(data)], cwd=work, input="a-long-password\n")
    port = unused_port()
    log = (work / "server.log").open("wb")
    server = subprocess.Popen([server_cmd, "serve", "--data-dir", str(data), "--port",
                               str(port)], cwd=work, stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, env=clean_environ())
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if http_get(port, "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, \
                (work / "server.log").read_text()
            time.sleep(0.2)
        status, page = http_get(port, "/login")
        assert status == 200 and b"<form" in page  # a template rendered
        assert http_get(port, "/static/iceprod.css")[0] == 200
        key = run([server_cmd, "passkey", "issue", "--data-dir", str(data), "--role", "user",
                   "--user", "admin"], cwd=work).strip()
        pilot_key = run([server_cmd, "passkey", "issue", "--data-dir", str(data), "--role",
                         "pilot"], cwd=work).strip()
        cfg = work / "one.json"
        cfg.write_text(json.dumps(config()))
        url = f"http://127.0.0.1:{port}"
        dataset = run([server_cmd, "submit", str(cfg), "--njobs", "3", "--url", url,
                       "--passkey", key], cwd=work).strip()
        run([str(venv / "bin" / "iceprod-pilot"), "--url", url, "--passkey", pilot_key,
             "--exit-when-idle", "5", "--poll-interval", "1", "--scratch",
             str(work / "scratch")], cwd=work, timeout=180)
        table = run([server_cmd, "status", "--url", url, dataset], cwd=work)
        assert re.search(r"^complete\s+3$", table, re.M), table
    finally:
        stop_process(server)
        log.close()
