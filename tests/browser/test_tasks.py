"""A task's page: reset a failed task and see it run again; read its logs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.browser.helpers import (
    Pilots,
    Shots,
    Site,
    click_and_confirm,
    dataset_config,
    login,
    python_task,
)
from tests.support.datasets import wait_until

# one failure and the task is failed: the flaky task below fails exactly once
SERVER_ENV = {"ICEPROD_MAX_RESETS": "1"}

FLAKY = ("import os, sys; marker = sys.argv[1]; first = not os.path.exists(marker); "
         "open(marker, 'a').close(); "
         "print('first attempt: failing on purpose' if first else 'second attempt: all good');"
         " sys.exit(3 if first else 0)")
LINES = 100
CHATTY = f"for i in range(1, {LINES + 1}): print(f'log line {{i:03d}} of {LINES}')"


def only_task(site: Site, dataset_id: str, status: str, pilots: Pilots,
              timeout: float = 60.0) -> str:
    """Wait until the dataset's one task has ``status``; its id."""
    def reached() -> str | None:
        tasks = site.tasks(dataset_id)
        return tasks[0]["task_id"] if tasks and tasks[0]["status"] == status else None

    try:
        return wait_until(f"the task to be {status}", reached, timeout, interval=0.25)
    except AssertionError as e:
        raise AssertionError(f"{e}; tasks: {site.tasks(dataset_id)}\n{pilots.logs()}") from None


def test_reset_a_failed_task_and_see_it_run_again(page: Any, site: Site, pilots: Pilots,
                                                  shot: Shots, tmp_path: Path) -> None:
    marker = tmp_path / "flaky-ran-once"
    dataset_id = site.submit("alice", dataset_config(python_task("flaky", FLAKY, str(marker))),
                             description="fails once")
    pilots.start(1)
    task_id = only_task(site, dataset_id, "failed", pilots)

    login(page, "alice", next_url=f"/task/{task_id}")
    assert page.url.endswith(f"/task/{task_id}"), page.url
    assert page.inner_text("#task-status").strip() == "failed"
    assert "first attempt: failing on purpose" in page.inner_text("#log-tail-stdout")
    attempts = page.locator("#task-attempts tbody tr")
    assert attempts.count() == 1, attempts.all_inner_texts()
    assert "exited with code 3" in attempts.first.inner_text(), \
        f"the attempt's error should be shown: {attempts.first.inner_text()!r}"
    shot(page, "failed")

    click_and_confirm(page, "#action-reset-task")
    only_task(site, dataset_id, "complete", pilots)

    def run_again() -> bool:
        # the task page is not a live page: look again as a person would
        page.reload()
        return page.inner_text("#task-status").strip() == "complete"

    wait_until("the task page to show the task complete", run_again, timeout=20, interval=0.5)
    shot(page, "complete")
    assert "second attempt: all good" in page.inner_text("#log-tail-stdout")
    rows = attempts.all_inner_texts()
    assert len(rows) == 2, f"both attempts should be listed: {rows}"
    assert not page.locator("#messages .message.error").count(), \
        page.locator("#messages").inner_text()
    assert [a["error"] for a in site.task(task_id)["attempts"]] == [True, False]


def test_read_a_log_on_the_task_page_and_in_full(page: Any, site: Site, pilots: Pilots,
                                                 shot: Shots) -> None:
    dataset_id = site.submit("bob", dataset_config(python_task("chatty", CHATTY)),
                             description="prints a hundred lines")
    pilots.start(1)
    task_id = only_task(site, dataset_id, "complete", pilots)

    page.goto(f"/task/{task_id}")
    shot(page, "task-page")
    tail = page.inner_text("#log-tail-stdout")
    got = re.findall(r"log line (\d{3}) of", tail)
    assert got == [f"{i:03d}" for i in range(LINES - 39, LINES + 1)], \
        f"the task page should show the last 40 lines of stdout, got:\n{tail}"

    link = page.locator(f"a[href$='/log/{task_id}/stdout']")
    assert link.count(), f"no link to /log/{task_id}/stdout on the task page"
    with page.expect_navigation():
        link.first.click()
    shot(page, "full-log")
    assert page.url.endswith(f"/log/{task_id}/stdout"), page.url
    full = page.locator("body").inner_text()
    got = re.findall(r"log line (\d{3}) of", full)
    assert got == [f"{i:03d}" for i in range(1, LINES + 1)], \
        f"the full log should hold every line once, in order; got {got[:5]}...{got[-5:]}"
