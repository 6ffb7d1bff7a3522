"""What the browser tests share: the server they drive, pilots, and reading pages.

A :class:`Site` is one real ``iceprod-server serve`` with three people (alice and bob, plain
users, and an administrator), all able to log in with :data:`PASSWORD`, and a pilot passkey.
:class:`Pilots` runs real ``iceprod-pilot`` processes against it. The page helpers read what
a person sees (tables, the progress bar, messages) without depending on how it is styled.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page

from iceprod_server.client import IceProdClient, RPCError
from tests.support.datasets import REPO
from tests.support.servers import ICEPROD_PILOT, PASSWORD, ServerProcess, clean_environ

T = TypeVar("T")

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
WIDTH = 1280
EXAMPLES = REPO / "conf" / "examples"
STATES = ("idle", "waiting", "queued", "processing", "reset", "resume", "suspended", "failed",
          "complete")
USERS = ("alice", "bob")
ADMIN = "admin1"

__all__ = ["PASSWORD", "Site", "Pilots", "Shots"]


@dataclass
class Site:
    """A server process with its people: ``alice``, ``bob`` (users) and ``admin1``."""

    srv: ServerProcess
    pilot_key: str
    keys: dict[str, str]

    @classmethod
    def start(cls, srv: ServerProcess) -> Site:
        # the first administrator comes from the command line, as on a new deployment; the
        # rest through the admin methods (quicker than one command per person)
        keys = {ADMIN: srv.deployment.passkey("admin", ADMIN)}
        admin = srv.client(keys[ADMIN])
        for name in USERS:
            admin.call("create_user", username=name, password=PASSWORD, role="user")
            keys[name] = admin.call("issue_passkey", role="user", username=name)["passkey"]
        pilot_key: str = admin.call("issue_passkey", role="pilot")["passkey"]
        return cls(srv, pilot_key, keys)

    @property
    def url(self) -> str:
        return self.srv.url

    def client(self, username: str | None = None) -> IceProdClient:
        """A client with ``username``'s passkey, or anonymous."""
        return self.srv.client(self.keys[username] if username else None)

    @property
    def admin(self) -> IceProdClient:
        return self.client(ADMIN)

    def submit(self, owner: str, cfg: dict[str, Any], njobs: int = 1,
               description: str = "browser test", **kwargs: Any) -> str:
        dataset_id: str = self.client(owner).call("submit_dataset", config=cfg, njobs=njobs,
                                                  description=description, **kwargs)
        return dataset_id

    def dataset(self, dataset_id: str) -> dict[str, Any]:
        info: dict[str, Any] = self.client().call("public_get_dataset", dataset_id=dataset_id)
        return info

    def counts(self, dataset_id: str) -> dict[str, int]:
        got = self.client().call("public_get_number_of_tasks_in_each_state",
                                 dataset_id=dataset_id)
        return {k: v for k, v in got.items() if v}

    def tasks(self, dataset_id: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.client().call(
            "public_get_tasks", dataset_id=dataset_id, limit=1000)["items"]
        return items

    def task(self, task_id: str) -> dict[str, Any]:
        info: dict[str, Any] = self.client().call("public_get_task", task_id=task_id)
        return info

    def dataset_total(self) -> int:
        """How many datasets exist, whatever their status."""
        by_status = self.client().call("public_get_datasets_by_status")
        return sum(len(ids) for ids in by_status.values())

    def quiesce(self) -> None:
        """Suspend every dataset that could still hand out tasks, so the next test's pilots
        only ever see that test's datasets."""
        by_status = self.client().call("public_get_datasets_by_status")
        for status in ("processing", "errors", "truncated"):
            for dataset_id in by_status.get(status, []):
                try:
                    self.admin.call("suspend_dataset", dataset_id=dataset_id)
                except RPCError as e:
                    if e.code != -32004:
                        raise


def example(name: str = "simple") -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EXAMPLES / f"{name}.json").read_text())
    return loaded


def python_task(name: str, code: str, *args: str) -> dict[str, Any]:
    """A task of one module running ``python3 -c code args...``."""
    module = {"name": name, "src": "python3", "args": ["-c", code, *args],
              "env_shell": "", "env_clear": True}
    return {"name": name, "depends": [],
            "requirements": {"cpu": 1, "memory": 0.5, "disk": 0.1, "time": 0.1},
            "batchsys": None, "data": [], "parameters": {},
            "trays": [{"name": "main", "iterations": 1, "modules": [module]}]}


def dataset_config(*tasks: dict[str, Any], description: str = "browser test") -> dict[str, Any]:
    return {"version": 3, "description": description, "options": {},
            "steering": {"parameters": {}, "batchsys": None, "system": {}, "resources": [],
                         "data": []},
            "tasks": list(tasks), "difplus": None}


@dataclass
class Pilots:
    """Real ``iceprod-pilot`` processes, stopped (SIGTERM) when the test ends."""

    site: Site
    workdir: Path
    procs: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def start(self, count: int = 1, cpu: int = 2) -> None:
        for _ in range(count):
            n = len(self.procs)
            log_path = self.workdir / f"pilot{n}.log"
            with log_path.open("wb") as log:
                proc = subprocess.Popen(
                    [ICEPROD_PILOT, "--url", self.site.url, "--passkey", self.site.pilot_key,
                     "--cpu", str(cpu), "--memory", "4", "--disk", "5", "--time", "1",
                     "--poll-interval", "0.5", "--heartbeat", "5",
                     "--hostname", f"browser-node{n}", "--scratch",
                     str(self.workdir / f"scratch{n}")],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env=clean_environ())
            self.procs.append((proc, log_path))

    def logs(self) -> str:
        return "\n".join(f"---- {path.name} ----\n{path.read_text(errors='replace')[-3000:]}"
                         for _, path in self.procs if path.exists())

    def stop(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


@dataclass
class Shots:
    """Screenshots of one test: ``<basetemp>/screenshots/<module>/<test>-<nn>-<step>.png``."""

    folder: Path
    test: str
    taken: list[Path] = field(default_factory=list)

    def __call__(self, page: Page, step: str) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", step)
        path = self.folder / f"{self.test}-{len(self.taken) + 1:02d}-{safe}.png"
        page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        return path


# -- reading and driving pages -------------------------------------------------------------

def login(page: Page, username: str, password: str = PASSWORD, next_url: str = "/") -> None:
    """Log in through the form and wait until the browser has left /login."""
    page.goto(f"/login?next={next_url}")
    page.fill("#username", username)
    page.fill("#password", password)
    with page.expect_navigation():
        page.click("#login-submit")
    assert "/login" not in page.url, (
        f"logging in as {username} stayed on {page.url}: {error_text(page)!r}")


def error_text(page: Page) -> str:
    box = page.locator("#login-error")
    return box.inner_text() if box.count() else ""


def confirm_click(page: Page, selector: str, timeout: float = 5.0,
                  required: bool = True) -> str:
    """Click an action button and accept its confirmation, whether the page asks with
    ``window.confirm`` or with an HTML ``<dialog>``; returns the question it asked ("" when
    it asked none and ``required`` is false)."""
    asked: list[str] = []

    def accept(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    try:
        page.click(selector)
        deadline = time.monotonic() + timeout
        modal = page.locator("dialog[open]")
        while time.monotonic() < deadline:
            if asked:
                return asked[0]
            if modal.count() and modal.first.is_visible():
                question = modal.first.inner_text()
                buttons = modal.first.locator("button, input[type=submit]")
                yes = buttons.filter(has_text=re.compile(
                    r"^\s*(ok|yes|confirm|continue|suspend|resume|reset|hard reset|truncate|"
                    r"set|apply)\b", re.I))
                (yes.first if yes.count() else buttons.last).click()
                return question
            page.wait_for_timeout(100)
    finally:
        page.remove_listener("dialog", accept)
    if required:
        raise AssertionError(f"clicking {selector} asked for no confirmation within {timeout} s")
    return ""


def click_and_confirm(page: Page, selector: str) -> str:
    """Click a button; accept a confirmation if the page asks for one."""
    return confirm_click(page, selector, timeout=1.5, required=False)


def _leading_int(text: str) -> int:
    found = re.match(r"\s*([\d,]+)", text)
    return int(found.group(1).replace(",", "")) if found else 0


def _state_of(text: str) -> str | None:
    words = re.findall(r"[a-z]+", text.lower())
    return words[0] if words and words[0] in STATES else None


def table_counts(page: Page, selector: str = "#counts-table") -> dict[str, int]:
    """Task counts by state as a table shows them (states as columns or as rows, one row or
    column per task name), zero counts left out; a "total" row or column is not added in."""
    rows: list[list[str]] | None = page.evaluate(
        """(sel) => {
            const table = document.querySelector(sel);
            if (!table) return null;
            return [...table.querySelectorAll("tr")].map(
                tr => [...tr.children].map(cell => cell.textContent.trim()));
        }""", selector)
    assert rows is not None, f"{selector} is not on {page.url}"
    totals: dict[str, int] = {}
    header = next((r for r in rows if any(_state_of(c) for c in r)), None)
    if header is not None and sum(1 for c in header if _state_of(c)) > 1:
        columns = {i: _state_of(c) for i, c in enumerate(header) if _state_of(c)}
        for row in rows[rows.index(header) + 1:]:
            if row and row[0].strip().lower().startswith(("total", "all")):
                continue
            for i, state in columns.items():
                if state and i < len(row):
                    totals[state] = totals.get(state, 0) + _leading_int(row[i])
    else:
        skip = {i for i, c in enumerate(rows[0] if rows else [])
                if c.strip().lower().startswith(("total", "all"))}
        for row in rows:
            state = _state_of(row[0]) if row else None
            if state:
                totals[state] = totals.get(state, 0) + sum(
                    _leading_int(c) for i, c in enumerate(row[1:], 1) if i not in skip)
    return {k: v for k, v in totals.items() if v}


def wait_for(page: Page, what: str, read: Callable[[], T], done: Callable[[T], bool],
             timeout: float = 30.0, interval: float = 0.25) -> T:
    """Poll ``read()`` (which reads the page, never reloads it) until ``done`` holds for
    what it returned; on timeout the failure shows the last thing read."""
    deadline = time.monotonic() + timeout
    last: Any = "(nothing read yet)"
    while True:
        try:
            seen = read()
        except (PlaywrightError, AssertionError) as e:
            last = f"(page not readable: {e})"
        else:
            if done(seen):
                return seen
            last = seen
        if time.monotonic() > deadline:
            raise AssertionError(f"{page.url}: timed out after {timeout} s waiting for {what};"
                                 f" last seen: {last!r}")
        page.wait_for_timeout(interval * 1000)


def progress(page: Page) -> tuple[float, str]:
    """The dataset page's progress: (#progress-bar's data-complete-fraction, the visible
    percentage: the bar's own text, else #progress-percent's next to it)."""
    bar = page.locator("#progress-bar")
    fraction = bar.get_attribute("data-complete-fraction")
    assert fraction is not None, "#progress-bar has no data-complete-fraction"
    text: str = bar.inner_text()
    if percent(text) is None and page.locator("#progress-percent").count():
        text = page.locator("#progress-percent").inner_text()
    return float(fraction), text


def percent(text: str) -> float | None:
    """The percentage a text shows ("37%", "37.5 %"), or None."""
    found = re.search(r"(\d+(?:\.\d+)?)\s*%", text)
    return float(found.group(1)) if found else None


def overview_complete(page: Page) -> int:
    """The overview's count of complete tasks across the system."""
    return _leading_int(page.locator('#overview-tasks [data-count="complete"]').inner_text())


class NoReload:
    """Notices a reload or navigation of a page from now on: live updates must not need
    one."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.navigations: list[str] = []
        page.evaluate("window.__sameDocument = true")
        page.on("framenavigated", self._navigated)

    def _navigated(self, frame: Any) -> None:
        if frame == self.page.main_frame:
            self.navigations.append(frame.url)

    def check(self) -> None:
        assert self.navigations == [], f"{self.page.url} navigated: {self.navigations}"
        assert self.page.evaluate("window.__sameDocument") is True, \
            f"{self.page.url} was reloaded"


def scroll_width(page: Page) -> int:
    width: int = page.evaluate("document.scrollingElement.scrollWidth")
    return width


def action_buttons(page: Page) -> list[str]:
    """The ids of the action buttons on the page (``#action-...``)."""
    ids: list[str] = page.evaluate(
        "[...document.querySelectorAll('[id^=\"action-\"]')].map(e => e.id)")
    return ids


class Settled:
    """Waits, after a navigation, until the page has done what it does on its own: the
    ``load`` event, every request it started (other than its live event stream) answered,
    and every image either loaded or failed (so an ``onerror`` handler has run)."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.pending: set[Any] = set()
        page.on("request", self._started)
        page.on("requestfinished", self._ended)
        page.on("requestfailed", self._ended)

    def _started(self, request: Any) -> None:
        if "/live/" not in request.url:  # an EventSource stays open by design
            self.pending.add(request)

    def _ended(self, request: Any) -> None:
        self.pending.discard(request)

    def wait(self, timeout: float = 15.0) -> None:
        self.page.wait_for_load_state("load")
        deadline = time.monotonic() + timeout
        while self.pending:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.page.url}: requests still open after "
                                     f"{timeout} s: {[r.url for r in self.pending]}")
            self.page.wait_for_timeout(20)  # lets Playwright deliver the request events
        # every <img> has loaded or failed; its load or error event is dispatched before
        # the next task of the page, which the second check runs in
        for _ in range(2):
            self.page.wait_for_function("[...document.images].every(img => img.complete)",
                                        polling=50, timeout=timeout * 1000)
