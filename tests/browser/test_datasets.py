"""A dataset's page: live progress while pilots work, the owner's actions, and what
another user may (not) do there."""

from __future__ import annotations

import re
from typing import Any

from iceprod_server.client import RPCError
from tests.browser.helpers import (
    NoReload,
    Pilots,
    Shots,
    Site,
    action_buttons,
    confirm_click,
    example,
    login,
    overview_complete,
    percent,
    progress,
    table_counts,
    wait_for,
)
from tests.support.datasets import wait_until

OWNER_ACTIONS = {"action-suspend", "action-reset", "action-hard-reset", "action-truncate",
                 "action-priority"}


def test_progress_reaches_100_percent_without_reloading(page: Any, site: Site, pilots: Pilots,
                                                        shot: Shots) -> None:
    njobs = 8
    dataset_id = site.submit("alice", example("simple"), njobs=njobs,
                             description="watched live")
    page.goto(f"/dataset/{dataset_id}")
    fraction, text = progress(page)
    assert fraction == 0 and percent(text) == 0, (fraction, text)
    shot(page, "before-pilots")
    overview = page.context.new_page()
    overview.goto("/")
    complete_before = overview_complete(overview)
    unmoved = [NoReload(page), NoReload(overview)]

    pilots.start(2)
    try:
        wait_for(page, "the progress bar at 100%", lambda: progress(page),
                 lambda seen: seen[0] >= 1.0 and percent(seen[1]) == 100, timeout=60)
    except AssertionError as e:
        raise AssertionError(f"{e}\nthe server's counts: {site.counts(dataset_id)}") from None
    seen = wait_for(page, f"{njobs} complete tasks in #counts-table",
                    lambda: table_counts(page), lambda c: c == {"complete": njobs})
    shot(page, "complete")
    wait_for(overview, f"{njobs} more complete tasks on the overview",
             lambda: overview_complete(overview),
             lambda n: n >= complete_before + njobs)
    shot(overview, "overview")
    for watched in unmoved:
        watched.check()
    assert site.counts(dataset_id) == {"complete": njobs} == seen


def test_suspend_and_resume_from_the_page(page: Any, site: Site, shot: Shots) -> None:
    njobs = 4
    dataset_id = site.submit("alice", example("simple"), njobs=njobs,
                             description="suspend me")
    # the confirmation counts the tasks made so far: let the scheduler make them first
    wait_until("the jobs to be made",
               lambda: site.dataset(dataset_id)["jobs_materialized"] == njobs)
    login(page, "alice", next_url=f"/dataset/{dataset_id}")
    assert page.url.endswith(f"/dataset/{dataset_id}"), page.url
    before = table_counts(page)
    assert sum(before.values()) == njobs and "suspended" not in before, before

    question = confirm_click(page, "#action-suspend")
    assert re.search(rf"\b{njobs}\b", question), \
        f"the confirmation should say how many tasks it touches ({njobs}): {question!r}"
    wait_for(page, "every task suspended in #counts-table", lambda: table_counts(page),
             lambda c: c == {"suspended": njobs})
    shot(page, "suspended")
    assert site.dataset(dataset_id)["status"] == "suspended"
    assert site.counts(dataset_id) == {"suspended": njobs}
    assert not page.locator("#messages .message.error").count(), \
        page.locator("#messages").inner_text()

    question = confirm_click(page, "#action-resume")
    assert re.search(rf"\b{njobs}\b", question), \
        f"the confirmation should say how many tasks it touches ({njobs}): {question!r}"
    after = wait_for(page, "no suspended task in #counts-table", lambda: table_counts(page),
                     lambda c: "suspended" not in c and sum(c.values()) == njobs)
    shot(page, "resumed")
    assert set(after) <= {"idle", "waiting", "queued", "resume"}, after
    assert site.dataset(dataset_id)["status"] == "processing"
    wait_until("the tasks back in the queue", lambda: "suspended" not in site.counts(dataset_id))


def test_only_the_owner_and_admins_get_actions(page: Any, site: Site, shot: Shots) -> None:
    dataset_id = site.submit("alice", example("simple"), njobs=2, description="alice's")
    page.goto(f"/dataset/{dataset_id}")
    assert action_buttons(page) == [], "an anonymous visitor should see no actions"

    login(page, "alice", next_url=f"/dataset/{dataset_id}")
    assert OWNER_ACTIONS <= set(action_buttons(page)), action_buttons(page)
    page.goto("/logout")
    login(page, "admin1", next_url=f"/dataset/{dataset_id}")
    assert OWNER_ACTIONS <= set(action_buttons(page)), action_buttons(page)
    page.goto("/logout")

    login(page, "bob", next_url=f"/dataset/{dataset_id}")
    assert page.url.endswith(f"/dataset/{dataset_id}"), page.url
    assert action_buttons(page) == [], \
        f"bob sees actions on alice's dataset: {action_buttons(page)}"
    shot(page, "no-actions")
    task_id = wait_until("alice's tasks to be made", lambda: site.tasks(dataset_id))[0]["task_id"]
    page.goto(f"/task/{task_id}")
    assert action_buttons(page) == [], \
        f"bob sees actions on alice's task: {action_buttons(page)}"
    page.goto(f"/dataset/{dataset_id}")

    # forced from the console: the server refuses, and the page shows why
    refused = page.evaluate("""async (id) => {
        try { await iceprod.rpc("suspend_dataset", {dataset_id: id}); return null; }
        catch (e) { return {code: e.code, message: e.message}; }
    }""", dataset_id)
    assert refused and refused["code"] == -32002, refused
    try:
        site.client("bob").call("suspend_dataset", dataset_id=dataset_id)
        raise AssertionError("bob's passkey suspended alice's dataset")
    except RPCError as e:
        server_says = e.reason
    page.evaluate("id => iceprod.act('Suspend', 'suspend_dataset', {dataset_id: id})",
                  dataset_id)
    error = page.locator("#messages .message.error")
    error.first.wait_for(state="visible")
    shot(page, "refused")
    assert server_says in error.first.inner_text(), (server_says, error.first.inner_text())
    assert site.dataset(dataset_id)["status"] == "processing"
