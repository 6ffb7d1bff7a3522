"""``request_key`` on the calls that create (both databases): a repeat with the same key
answers the first result and creates nothing more; a key used for another call, or
malformed, is -32602 and creates nothing; two callers' keys never meet; a repeated
``new_task`` answers the tasks the first call claimed that the caller still holds; a
repeat of a call that made a secret gets a new secret for the same passkey or site (the
first stops working); keys are forgotten after ``request_key_seconds``.

The answers that make a client repeat a call (-32006, a lost connection) are in
tests/faults/test_outcomes.py; here the repeats are made on purpose."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from iceprod_server.client import IceProdClient, RPCError
from tests.support import databases
from tests.support.datasets import config, offer, task, wait_counts, wait_until
from tests.support.harness import Base, Harness
from tests.support.servers import ServerProcess


@pytest.fixture(scope="module")
def base(module_server: Any, module_db_url: str) -> Base:
    return Base.start(module_server, module_db_url, {})


@pytest.fixture
def h(base: Base) -> Iterator[Harness]:
    harness = Harness(base)
    yield harness
    harness.close()


def no_retries(srv: ServerProcess, passkey: str, pilot_ref: str | None = None) -> IceProdClient:
    return IceProdClient(srv.url, passkey=passkey, pilot_ref=pilot_ref, retries=0)


def owned(h: Harness, owner: str = "alice") -> list[str]:
    page = h.public.call("public_get_datasets", owner=owner, limit=1000)
    return sorted(d["dataset_id"] for d in page["items"])


def refused(fn: Any, *args: Any, **kwargs: Any) -> RPCError:
    with pytest.raises(RPCError) as e:
        fn(*args, **kwargs)
    return e.value


def test_a_repeated_submission_answers_the_first_dataset(h: Harness) -> None:
    before = owned(h)
    params = {"config": config(task("a")), "description": "keyed", "njobs": 2,
              "request_key": "submit-once"}
    first = h.owner.call("submit_dataset", **params)
    h.datasets.append(first)
    assert h.owner.call("submit_dataset", **params) == first
    assert owned(h) == sorted([*before, first])
    # a new key is a new call
    other = h.owner.call("submit_dataset", **{**params, "request_key": "submit-twice"})
    h.datasets.append(other)
    assert other != first and owned(h) == sorted([*before, first, other])


def test_a_key_used_for_another_call_is_refused(h: Harness) -> None:
    first = h.owner.call("submit_dataset", config=config(task("a")), description="one",
                         request_key="reused")
    h.datasets.append(first)
    before = owned(h)
    e = refused(h.owner.call, "submit_dataset", config=config(task("a")),
                description="another", request_key="reused")
    assert e.code == -32602 and e.data["problems"][0].startswith("request_key: "), e.data
    admin = h.base.admin
    groups = admin.call("list_groups")
    # the admin's own key "reused" is another caller's: it works for the admin
    admin.call("create_group", name="keyed-group-1", request_key="reused")
    e = refused(admin.call, "create_group", name="keyed-group-2", request_key="reused")
    assert e.code == -32602, e.data
    assert owned(h) == before
    assert len(admin.call("list_groups")) == len(groups) + 1


def test_a_malformed_key_is_refused_and_nothing_is_made(h: Harness) -> None:
    good = h.owner.call("submit_dataset", config=config(task("a")),
                        request_key="Letters.digits_and:-1")
    h.datasets.append(good)
    before = owned(h)
    for bad in ["", "has space", "x" * 65, 123, ["k"], "caf\u00e9"]:
        e = refused(h.owner.call, "submit_dataset", config=config(task("a")),
                    request_key=bad)
        assert e.code == -32602 and "request_key" in str(e.data), (bad, e.data)
    assert owned(h) == before


def test_keys_belong_to_their_caller(h: Harness) -> None:
    bob = h.srv.client(h.srv.deployment.passkey("user", "bob"))
    mine = h.owner.call("submit_dataset", config=config(task("a")), request_key="same")
    theirs = bob.call("submit_dataset", config=config(task("a")), request_key="same")
    h.datasets += [mine, theirs]
    assert mine != theirs
    assert mine in owned(h, "alice") and theirs in owned(h, "bob")


def test_repeated_admin_creations_make_one_row(h: Harness) -> None:
    admin = h.base.admin
    user = admin.call("create_user", username="keyed-carol", password="long enough",
                      request_key="carol")
    assert admin.call("create_user", username="keyed-carol", password="long enough",
                      request_key="carol") == user
    assert [u["username"] for u in admin.call("list_users")].count("keyed-carol") == 1

    group = admin.call("create_group", name="keyed-group", priority=2.0, request_key="g")
    assert admin.call("create_group", name="keyed-group", priority=2.0,
                      request_key="g") == group

    keys = len(admin.call("list_passkeys"))
    first = admin.call("issue_passkey", role="pilot", description="keyed", request_key="pk")
    again = admin.call("issue_passkey", role="pilot", description="keyed", request_key="pk")
    assert again["key_id"] == first["key_id"] and again["passkey"] != first["passkey"]
    assert len(admin.call("list_passkeys")) == keys + 1
    # the server keeps no secret in the clear: the repeat's key works, the first does not
    assert no_retries(h.srv, again["passkey"]).call("whoami")["key_id"] == first["key_id"]
    assert refused(no_retries(h.srv, first["passkey"]).call, "whoami").code == -32001

    site = admin.call("register_site", name="keyed-site", request_key="site")
    again = admin.call("register_site", name="keyed-site", request_key="site")
    assert again["site_id"] == site["site_id"] and again["site_key"] != site["site_key"]
    assert [s["name"] for s in admin.call("list_sites")].count("keyed-site") == 1
    assert no_retries(h.srv, again["site_key"]).call("whoami")["site_id"] == site["site_id"]
    assert refused(no_retries(h.srv, site["site_key"]).call, "whoami").code == -32001


def test_a_repeated_new_task_answers_the_tasks_it_claimed(h: Harness) -> None:
    dataset_id = h.submit(config(task("a")), njobs=3)
    wait_counts(h.public, dataset_id, {"queued": 3})
    pilot = no_retries(h.srv, h.base.pilot_key, pilot_ref="keyed-pilot")
    first = pilot.call("new_task", **offer(cpu=1), request_key="claim-1")
    assert len(first) == 1
    task_id = first[0]["options"]["task_id"]
    again = pilot.call("new_task", **offer(cpu=1), request_key="claim-1")
    assert [t["options"]["task_id"] for t in again] == [task_id]
    assert again[0]["options"]["attempt"] == first[0]["options"]["attempt"]
    wait_counts(h.public, dataset_id, {"queued": 2, "processing": 1})
    # another pilot on the same passkey has keys of its own
    other = no_retries(h.srv, h.base.pilot_key, pilot_ref="keyed-pilot-2")
    (second,) = other.call("new_task", **offer(cpu=1), request_key="claim-1")
    assert second["options"]["task_id"] != task_id
    # once the task is no longer held, the repeat answers nothing, and claims nothing
    pilot.call("finish_task", task_id=task_id, stats={"time_used": 1.0})
    assert pilot.call("new_task", **offer(cpu=1), request_key="claim-1") == []
    wait_counts(h.public, dataset_id, {"queued": 1, "processing": 1, "complete": 1})


def test_keys_are_forgotten_after_request_key_seconds(server: Any, db_url: str) -> None:
    srv: ServerProcess = server(db_url, env={"ICEPROD_REQUEST_KEY_SECONDS": "1"})
    user = srv.client(srv.deployment.passkey("user", "alice"))
    params = {"config": config(task("a")), "request_key": "short-lived"}
    first = user.call("submit_dataset", **params)
    wait_until("the key to be forgotten (the scheduler's sweep, every 10 s)",
               lambda: databases.scalar(db_url, "SELECT COUNT(*) FROM request_keys "
                                                "WHERE request_key = 'short-lived'") == 0,
               timeout=30)
    assert user.call("submit_dataset", **params) != first
