"""Browser fixtures: Debian's chromium, headless, driven by Playwright for Python.

- ``browser``: one chromium for all the browser tests, launched from /usr/bin/chromium (never a
  downloaded browser). Missing chromium fails these tests, or skips them when
  ``ICEPROD_TEST_SKIP_BROWSER=1``.
- ``site``: one server per test module with alice, bob and an administrator
  (:class:`tests.browser.helpers.Site`), on the database :data:`DATABASES` names for the
  module (SQLite and MariaDB alternate); a module may set ``SERVER_ENV`` for its server.
  After each test every dataset that could still run is suspended, so tests never share
  work.
- ``page``: a fresh browser context (no cookies, no storage) 1280 px wide for each test;
  when the test fails, a last screenshot is taken and the page's console errors printed.
- ``shot(page, step)``: a screenshot under ``<basetemp>/screenshots/<module>/``.
- ``pilots``: real ``iceprod-pilot`` processes, stopped when the test ends.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.helpers import CHROMIUM, LAUNCH_ARGS, WIDTH, Pilots, Shots, Site
from tests.support.databases import throwaway_database

SKIP_BROWSER = os.environ.get("ICEPROD_TEST_SKIP_BROWSER", "") == "1"
# the database of each module's server, alternating in the order the modules run; the
# pages read through the same functions on both, so one database per module is enough
DATABASES = {
    "test_datasets": "sqlite",
    "test_escaping": "mariadb",
    "test_layout": "sqlite",
    "test_login": "mariadb",
    "test_submit": "sqlite",
    "test_tasks": "mariadb",
}
_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


# package scope: chromium (and Playwright's event loop in this thread) are gone before
# the rest of the suite runs
@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        message = (f"{CHROMIUM} is missing: install Debian's chromium (`make test` does: "
                   "scripts/ensure-test-deps.sh) or set ICEPROD_TEST_SKIP_BROWSER=1 to skip "
                   "the browser tests")
        if SKIP_BROWSER:
            pytest.skip("ICEPROD_TEST_SKIP_BROWSER=1: " + message)
        pytest.fail(message, pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        pytest.fail(f"Playwright for Python is missing ({e}): pip install -e '.[test]'",
                    pytrace=False)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS,
                                     headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def site(request: pytest.FixtureRequest, module_server: Any,
         tmp_path_factory: pytest.TempPathFactory, browser: Any) -> Iterator[Site]:
    env: dict[str, str] = getattr(request.module, "SERVER_ENV", {})
    module = request.module.__name__.rsplit(".", 1)[-1]
    assert module in DATABASES, f"add {module} to DATABASES in tests/browser/conftest.py"
    with throwaway_database(DATABASES[module], tmp_path_factory.mktemp("db")) as url:
        yield Site.start(module_server(url, env=env))


@pytest.fixture(autouse=True)
def _quiet_site(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "site" in request.fixturenames:
        site: Site = request.getfixturevalue("site")
        if site.srv.alive():
            site.quiesce()


@pytest.fixture
def shot(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Shots:
    module = request.node.module.__name__.rsplit(".", 1)[-1]
    return Shots(tmp_path_factory.getbasetemp() / "screenshots" / module, request.node.name)


@pytest.fixture
def page(request: pytest.FixtureRequest, browser: Any, site: Site,
         shot: Shots) -> Iterator[Any]:
    context = browser.new_context(base_url=site.url, viewport={"width": WIDTH, "height": 900})
    context.set_default_timeout(10_000)
    pg = context.new_page()
    problems: list[str] = []
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.on("console", lambda m: problems.append(
        f"console {m.type}: {m.text} ({m.location.get('url')})") if m.type == "error" else None)
    pg.problems = problems  # read by tests that require a page without script errors
    yield pg
    if request.node.stash.get(_FAILED, False):
        try:
            path = shot(pg, "failed")
            print(f"screenshot of the failure: {path} (page {pg.url})")
        except Exception as e:  # the page may be gone; the failure itself matters more
            print(f"no screenshot of the failure: {e}")
        for line in problems:
            print(line)
    context.close()


@pytest.fixture
def pilots(request: pytest.FixtureRequest, site: Site, tmp_path: Path) -> Iterator[Pilots]:
    running = Pilots(site, tmp_path)
    yield running
    running.stop()
    if request.node.stash.get(_FAILED, False):
        print(running.logs())
