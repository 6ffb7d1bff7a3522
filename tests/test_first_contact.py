"""A claim whose ``new_task`` answer never reached its pilot goes back to the queue after the
short first-contact time, not after the whole lease.

A pilot that names itself with ``X-IceProd-Pilot`` confirms each claim with
``stillrunning`` at once (the reference pilot does); a claim it never confirms lives
``first_contact_seconds``. Claims by pilots without the header (IceProd 2 pilots, which
call ``stillrunning`` only once a module runs) keep the whole lease from the start.
"""

from __future__ import annotations

import time
from typing import Any

from tests.support.datasets import claim_one, config, offer, submit, task, wait_counts
from tests.support.servers import ServerProcess

FIRST_CONTACT = 2.0
ENV = {"ICEPROD_LEASE_SECONDS": "600", "ICEPROD_FIRST_CONTACT_SECONDS": str(FIRST_CONTACT),
       "ICEPROD_SCHEDULER_INTERVAL": "0.5"}


def test_an_unconfirmed_claim_returns_to_the_queue(server: Any, db_url: str) -> None:
    srv: ServerProcess = server(db_url, env=ENV)
    key = srv.deployment.passkey("pilot")
    owner = srv.client(srv.deployment.passkey("user", "alice"))
    dataset_id = submit(owner, config(task("a")), njobs=3)
    wait_counts(srv.client(), dataset_id, {"queued": 3})

    confirming = srv.client(key, pilot_ref="confirms", retries=0)
    legacy = srv.client(key, retries=0)  # no X-IceProd-Pilot: an IceProd 2 pilot
    lost = srv.client(key, pilot_ref="lost-answer", retries=0)
    kept = claim_one(confirming)["options"]
    assert confirming.call("stillrunning", task_id=kept["task_id"]) is True
    legacy_task = claim_one(legacy)["options"]["task_id"]
    claimed = claim_one(lost)["options"]
    claimed_at = time.monotonic()

    # the pilot whose answer was lost never calls; another pilot gets the task again
    other = srv.client(key, pilot_ref="other", retries=0)
    got: list[dict[str, Any]] = []
    while not got and time.monotonic() < claimed_at + 30:
        got = other.call("new_task", **offer())
        if not got:
            time.sleep(0.1)
    waited = time.monotonic() - claimed_at
    assert got, "the unconfirmed claim was not handed out again within 30 s (lease 600 s)"
    assert got[0]["options"]["task_id"] == claimed["task_id"]
    assert got[0]["options"]["attempt"] > claimed["attempt"]
    assert waited >= FIRST_CONTACT * 0.9, f"taken back after {waited:.1f} s"

    # claimed earlier, and still held: the confirmed claim and the IceProd 2 pilot's one
    public = srv.client()
    assert public.call("public_get_task", task_id=kept["task_id"])["status"] == "processing"
    assert public.call("public_get_task", task_id=legacy_task)["status"] == "processing"
    assert confirming.call("stillrunning", task_id=kept["task_id"]) is True
    assert legacy.call("stillrunning", task_id=legacy_task) is True
