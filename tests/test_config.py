"""Configuration and schema checks as an operator meets them on the command line.

- ``serve`` takes its port from the file, then ``ICEPROD_PORT``, then ``--port``;
- a bad value stops it with a one-line message naming the option, not a traceback;
- on an empty or outdated database schema it refuses to start and names
  ``iceprod-server migrate``, which fixes it;
- ``--help`` of every command exits 0 and explains its flags.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import (
    ICEPROD_PILOT,
    ICEPROD_SERVER,
    Deployment,
    http_get,
    iceprod_server,
    run_command,
    start_server,
    unused_port,
)


def _toml(data_dir: Path, text: str) -> None:
    path = data_dir / "iceprod.toml"
    path.write_text(path.read_text() + "\n" + text + "\n")


def test_port_from_file_then_environment_then_flag(tmp_path: Path, sqlite_url: str) -> None:
    dep = Deployment.init(tmp_path / "data", sqlite_url)
    in_file, in_env, in_flag = unused_port(), unused_port(), unused_port()
    _toml(dep.data_dir, f"port = {in_file}")
    runs: list[tuple[dict[str, str], int, bool]] = [
        ({}, in_file, False),
        ({"ICEPROD_PORT": str(in_env)}, in_env, False),
        ({"ICEPROD_PORT": str(in_env)}, in_flag, True),
    ]
    for env, port, flag in runs:
        srv = start_server(dep, tmp_path / "logs", env=env, port=port, port_flag=flag)
        try:
            assert http_get(port, "/healthz")[0] == 200
        finally:
            srv.stop()


def _serve_fails(dep: Deployment, env: dict[str, str] | None = None,
                 *args: str) -> subprocess.CompletedProcess[str]:
    proc = run_command([ICEPROD_SERVER, "serve", "--data-dir", str(dep.data_dir),
                        "--port", str(unused_port()), *args], env=env, check=False,
                       timeout=60)
    assert proc.returncode != 0, f"serve started:\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("how, words", [
    ("env ICEPROD_PORT=eighty", ("ICEPROD_PORT",)),
    ("env ICEPROD_LEASE_SECONDS=-1", ("lease_seconds",)),
    ("file colour = 'red'", ("colour",)),
    ("file lease_seconds = 'soon'", ("lease_seconds",)),
    ("flag --port 70000", ("port",)),
    ("flag --log-level LOUD", ("LOUD",)),
])
def test_bad_values_give_clear_errors(tmp_path: Path, sqlite_url: str, how: str,
                                      words: tuple[str, ...]) -> None:
    dep = Deployment.init(tmp_path / "data", sqlite_url)
    kind, _, value = how.partition(" ")
    env: dict[str, str] = {}
    args: list[str] = []
    if kind == "env":
        name, _, v = value.partition("=")
        env[name] = v
    elif kind == "file":
        _toml(dep.data_dir, value)
    else:
        args = value.split()
    proc = _serve_fails(dep, env, *args)
    for word in words:
        assert word in proc.stderr, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) <= 3, \
        f"a bad value should get a short message, not:\n{proc.stderr[-3000:]}"


@pytest.mark.parametrize("url", ["postgresql://iceprod:TopSecret99@127.0.0.1/iceprod",
                                 "oracle+cx://iceprod:TopSecret99@127.0.0.1:1521/x"])
def test_a_refused_db_url_is_printed_without_its_password(tmp_path: Path, sqlite_url: str,
                                                          url: str) -> None:
    dep = Deployment.init(tmp_path / "data", sqlite_url)
    proc = _serve_fails(dep, {"ICEPROD_DB_URL": url})
    assert "db_url" in proc.stderr and "iceprod:***@127.0.0.1" in proc.stderr, proc.stderr
    assert "TopSecret99" not in proc.stderr, proc.stderr
    init = iceprod_server("init", "--data-dir", str(tmp_path / "other"), "--db-url", url,
                          check=False)
    assert init.returncode != 0
    assert "TopSecret99" not in init.stdout + init.stderr, init.stdout + init.stderr


def _downgrade_to_base(url: str, target: str = "base") -> None:
    from alembic import command

    from iceprod_server.db.engine import make_engine
    from iceprod_server.db.migrate import alembic_config

    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), target)
    finally:
        engine.dispose()


def test_migrate_check_tells_a_schema_change_apart_and_changes_nothing(
        tmp_path: Path, db_url: str) -> None:
    from iceprod_server.db.migrate import head_revision

    dep = Deployment.init(tmp_path / "data", db_url)
    same = dep.cli("migrate", "--check")
    assert same.returncode == 0, same.stderr
    assert "no migration" in same.stdout, same.stdout
    _downgrade_to_base(db_url, "-1")
    for _ in range(2):  # the first check changed nothing: the second says the same
        outdated = dep.cli("migrate", "--check", check=False)
        assert outdated.returncode == 2, outdated.stdout + outdated.stderr
        assert f"this version needs {head_revision()}" in outdated.stderr, outdated.stderr
        assert "stop every server" in outdated.stderr, outdated.stderr
    _serve_fails(dep)
    assert dep.cli("migrate").returncode == 0
    assert dep.cli("migrate", "--check").returncode == 0


@pytest.mark.parametrize("state", ["empty", "outdated"])
def test_serve_refuses_an_old_schema_until_migrate(server: Any, tmp_path: Path, db_url: str,
                                                   state: str) -> None:
    data_dir = tmp_path / "data"
    if state == "empty":
        data_dir.mkdir()
        # set up by hand, without init: the cookie secret given as an option
        (data_dir / "iceprod.toml").write_text(f'db_url = "{db_url}"\n'
                                               f'cookie_secret = "{"k" * 40}"\n')
        dep = Deployment(data_dir, db_url)
    else:
        dep = Deployment.init(data_dir, db_url)
        _downgrade_to_base(db_url)
    proc = _serve_fails(dep)
    assert "iceprod-server migrate" in proc.stderr, proc.stderr
    migrated = dep.cli("migrate")
    assert migrated.returncode == 0
    assert "already at" not in migrated.stdout, migrated.stdout
    # migrate again: nothing to do, and says so
    again = dep.cli("migrate")
    assert again.returncode == 0
    assert "database schema already at" in again.stdout, again.stdout
    srv = server(db_url, deployment=dep)
    assert srv.client().call("echo", "up") == "up"


def test_serve_refuses_to_run_without_the_cookie_secret(tmp_path: Path, sqlite_url: str,
                                                       server: Any) -> None:
    """A made-up secret per process would make a login on one process fail on the next:
    without the file ``init`` writes (or the option), serve stops and says what to do."""
    dep = Deployment.init(tmp_path / "data", sqlite_url)
    (dep.data_dir / "cookie_secret").unlink()
    proc = _serve_fails(dep)
    assert "cookie secret" in proc.stderr and "iceprod-server init" in proc.stderr, \
        proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) <= 3, proc.stderr[-3000:]
    # the option given instead of the file is enough
    srv = server(sqlite_url, env={"ICEPROD_COOKIE_SECRET": "s" * 40}, deployment=dep)
    assert srv.client().call("echo", "up") == "up"


HELP = {
    (): ("init", "serve", "migrate", "add-user", "passkey", "submit", "status"),
    ("init",): ("--data-dir", "--db-url"),
    ("serve",): ("--data-dir", "--host", "--port"),
    ("migrate",): ("--data-dir",),
    ("add-user",): ("--admin", "--password-stdin", "--data-dir"),
    ("add-site",): ("--data-dir",),
    ("passkey",): ("issue", "revoke"),
    ("passkey", "issue"): ("--role", "--user", "--expires", "--data-dir"),
    ("passkey", "revoke"): ("--data-dir",),
    ("submit",): ("--njobs", "--url", "--passkey"),
    ("status",): ("--url",),
}


@pytest.mark.parametrize("command", sorted(HELP), ids=lambda c: " ".join(c) or "top")
def test_help_of_every_command(command: tuple[str, ...]) -> None:
    out = iceprod_server(*command, "--help", timeout=30).stdout
    for word in HELP[command]:
        assert word in out, f"`iceprod-server {' '.join(command)} --help` lacks {word}:\n{out}"


def test_help_of_the_pilot() -> None:
    out = run_command([ICEPROD_PILOT, "--help"], timeout=30).stdout
    for word in ("--url", "--passkey", "--exit-when-idle", "--cpu", "--gpu", "--memory",
                 "--disk"):
        assert word in out, f"iceprod-pilot --help lacks {word}:\n{out}"


def test_commands_never_prompt_without_a_terminal(tmp_path: Path, sqlite_url: str) -> None:
    dep = Deployment.init(tmp_path / "data", sqlite_url)
    proc = run_command([ICEPROD_SERVER, "add-user", "carol", "--data-dir", str(dep.data_dir)],
                       input="", check=False, timeout=30)
    assert proc.returncode != 0
    assert "--password-stdin" in proc.stderr, proc.stderr
