"""The files of deploy/: the systemd unit passes systemd's own check, and every metric the
Grafana dashboard plots is one the server exposes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from iceprod_server import metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing (Debian package systemd); make test "
                    "installs it", pytrace=False)
    unit = (DEPLOY / "iceprod-server.service").read_text()
    assert "--processes" in unit and "ExecReload=/bin/kill -HUP $MAINPID" in unit
    # the unit names the production virtualenv; check it against a program that exists
    exe = shutil.which("true")
    assert exe
    copy = tmp_path / "iceprod-server.service"
    copy.write_text(unit.replace("/opt/iceprod/.venv/bin/iceprod-server", exe))
    proc = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True)
    problems = [line for line in (proc.stdout + proc.stderr).splitlines()
                if "iceprod-server.service" in line and "Documentation" not in line]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr


def exposed_names() -> set[str]:
    names = set()
    for collector in vars(metrics).values():
        describe = getattr(collector, "describe", None)
        if callable(describe) and hasattr(collector, "_name"):
            for family in describe():
                names.add(family.name)
    return names


def test_dashboard_plots_only_exposed_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert exprs, "the dashboard has no queries"
    used = {re.sub(r"_(bucket|total|count|sum)$", "", m)
            for e in exprs for m in re.findall(r"\biceprod_[a-z_]+", e)}
    assert used - exposed_names() == set(), exposed_names()
