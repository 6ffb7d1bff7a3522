"""Fixtures: throwaway databases on SQLite and MariaDB, and real server processes.

- ``db_url``: parametrised over "sqlite" and "mariadb"; every test that takes it runs once
  per backend. ``module_db_url`` is the same for module-wide servers.
- ``server``: a factory that runs ``iceprod-server init`` and ``iceprod-server serve`` on an
  unused port and stops the process afterwards; ``server.another(first)`` starts a second
  process on the same database. ``module_server`` lives for a whole test module.
- ``sqlite_url``: a SQLite file for tests that are not about the database.
- ``h``: a :class:`~tests.support.harness.Harness` on the module's own ``base`` fixture;
  ``upstream``: an http server for the file proxy to fetch from.

See docs/testing.md for the environment variables.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import gridftp, gsi_ca
from tests.support.databases import BACKENDS, throwaway_database
from tests.support.harness import Base, Harness
from tests.support.servers import Deployment, ServerProcess, start_server
from tests.support.upstream import Upstream


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()


class ServerFactory:
    """Starts servers for one test (or one module) and stops them all afterwards."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.servers: list[ServerProcess] = []
        self._count = 0

    def deployment(self, db_url: str) -> Deployment:
        """``iceprod-server init`` of a new data directory on ``db_url``."""
        self._count += 1
        return Deployment.init(self.root / f"data{self._count}", db_url)

    def __call__(self, db_url: str, env: dict[str, str] | None = None,
                 deployment: Deployment | None = None) -> ServerProcess:
        """A server process on ``db_url`` (initialised first), or on ``deployment``."""
        deployment = deployment or self.deployment(db_url)
        server = start_server(deployment, self.root / "logs", env)
        self.servers.append(server)
        return server

    def another(self, first: ServerProcess, env: dict[str, str] | None = None) -> ServerProcess:
        """A second process serving the same data directory and database as ``first``."""
        return self(first.db_url, env, deployment=first.deployment)

    def close(self, show_logs: bool) -> None:
        for server in self.servers:
            server.stop()
        if show_logs:
            for server in self.servers:
                print(f"---- log of the server on port {server.port} ({server.log_path}) ----")
                print(server.log_text()[-8000:])


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with throwaway_database(request.param, tmp_path / "db") as url:
        yield url


@pytest.fixture(scope="module", params=BACKENDS)
def module_db_url(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with throwaway_database(request.param, tmp_path_factory.mktemp("db")) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    with throwaway_database("sqlite", tmp_path / "db") as url:
        yield url


@pytest.fixture
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerFactory]:
    factory = ServerFactory(tmp_path)
    yield factory
    factory.close(show_logs=request.node.stash.get(_FAILED, False))


@pytest.fixture(scope="module")
def module_server(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    factory = ServerFactory(tmp_path_factory.mktemp("servers"))
    failed_before = request.session.testsfailed
    yield factory
    factory.close(show_logs=request.session.testsfailed > failed_before)


@pytest.fixture(scope="module", params=("ftp", "gsiftp"))
def gridftp_server(request: pytest.FixtureRequest,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[gridftp.GridFTPServer]:
    """A real globus-gridftp-server on loopback, anonymous ftp:// and gsiftp:// with a
    throwaway certificate authority (tests/support/gsi_ca.py)."""
    with gsi_ca.scheme_server(request.param, tmp_path_factory.mktemp("gridftp")) as server:
        yield server


@pytest.fixture
def h(base: Base) -> Iterator[Harness]:
    """A harness on the test module's ``base`` server (each module says how it is set up
    in a ``base`` fixture of its own)."""
    harness = Harness(base)
    yield harness
    harness.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    """A small http server to proxy from (tests/support/upstream.py)."""
    up = Upstream()
    up.start()
    yield up
    up.stop()
