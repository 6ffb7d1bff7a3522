"""Leases and retries as IceProd 2.3 pilots meet them.

Leases are per passkey: a key issued with ``passkey issue --lease 2`` loses a silent
pilot's task after 2 s, while a key without one gets the server's default, which outlasts
IceProd 2's heartbeat gaps (its own server waited two hours). Any call of the claimant
about its task renews the lease. A failed task waits in ``reset`` for a back-off that
doubles with each failure, up to a cap.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.compat.iceprod2 import Iceprod2Error, Iceprod2Pilot
from tests.support.datasets import config, submit, wait_counts, wait_until
from tests.support.servers import ServerProcess, http_get

SHORT_LEASE = 2.0
# IceProd 2 pilots may be silent for a long download or upload; its server waited 2 h
SAFE_DEFAULT = 7200.0


def _start(server: Any, db_url: str, env: dict[str, str] | None = None
           ) -> tuple[ServerProcess, Any, str]:
    srv: ServerProcess = server(db_url, env=env or {})
    owner = srv.client(srv.deployment.passkey("user", "alice"))
    return srv, owner, srv.deployment.passkey("pilot", lease=SHORT_LEASE)


def _claim(pilot: Iceprod2Pilot) -> dict[str, Any]:
    got = wait_until("new_task to hand out a task", pilot.new_task)
    assert len(got) == 1, got
    options: dict[str, Any] = got[0]["options"]
    return options


def _task(srv: ServerProcess, task_id: str) -> dict[str, Any]:
    info: dict[str, Any] = srv.client().call("public_get_task", task_id=task_id)
    return info


def test_a_lost_claim_hears_stop(server: Any, db_url: str) -> None:
    srv, owner, short_key = _start(server, db_url)
    dataset_id = submit(owner, config(), njobs=1)
    silent = Iceprod2Pilot(srv.port, short_key)
    claimed = _claim(silent)
    task_id = claimed["task_id"]
    left = _task(srv, task_id)["lease_expires"] - time.time()
    assert 0 < left <= SHORT_LEASE + 0.5, f"the key's own lease was not used: {left:.1f} s"
    assert silent.stillrunning(task_id) is True

    # the pilot goes silent: its task is taken back as lost after the key's lease
    lost = wait_until("the silent pilot's task to be taken back",
                      lambda: _task(srv, task_id)["failures"] == 1)
    assert lost
    assert silent.stillrunning(task_id) is False
    with pytest.raises(Iceprod2Error) as refused:
        silent.finish_task(task_id)
    assert refused.value.code == -32004

    # another pilot, on a key without a lease of its own, gets the server's safe default
    other = Iceprod2Pilot(srv.port, srv.deployment.passkey("pilot"), source="127.0.0.2")
    again = _claim(other)
    assert (again["task_id"], again["attempt"]) == (task_id, 2)
    left = _task(srv, task_id)["lease_expires"] - time.time()
    assert SAFE_DEFAULT - 60 < left <= SAFE_DEFAULT, left
    assert silent.stillrunning(task_id) is False, "the old claimant must still hear stop"
    assert other.stillrunning(task_id) is True
    other.finish_task(task_id)
    wait_counts(owner, dataset_id, {"complete": 1})

    info = _task(srv, task_id)
    assert [(a["attempt"], a["error"]) for a in info["attempts"]] == [(1, True), (2, False)]
    assert "lost contact" in str(info["attempts"][0]["stats"])
    status, page = http_get(srv.port, f"/task/{task_id}")
    assert status == 200 and b"lost contact" in page


def test_any_call_about_the_task_renews_its_lease(server: Any, db_url: str) -> None:
    srv, owner, short_key = _start(server, db_url)
    dataset_id = submit(owner, config(), njobs=1)
    pilot = Iceprod2Pilot(srv.port, short_key)
    task_id = _claim(pilot)["task_id"]
    # no stillrunning: only the calls IceProd 2 makes around downloads and uploads
    until = time.monotonic() + 3 * SHORT_LEASE
    n = 0
    while time.monotonic() < until:
        if n % 2:
            pilot.update_pilot("p1", [task_id])
        else:
            pilot.upload_logfile(task_id, "stdlog", f"downloading part {n}\n")
        n += 1
        assert _task(srv, task_id)["status"] == "processing"
        time.sleep(SHORT_LEASE / 5)
    assert pilot.stillrunning(task_id) is True
    pilot.finish_task(task_id)
    wait_counts(owner, dataset_id, {"complete": 1})
    assert _task(srv, task_id)["failures"] == 0


def test_leases_show_in_the_passkey_list(server: Any, sqlite_url: str) -> None:
    srv, _owner, _short_key = _start(server, sqlite_url)
    admin = srv.client(srv.deployment.passkey("admin", "admin1"))
    issued = admin.call("issue_passkey", role="pilot", lease=90, description="by rpc")
    assert issued["lease_seconds"] == 90
    listed = [(k["description"], k["lease_seconds"]) for k in admin.call("list_passkeys")]
    assert sorted(lease for _, lease in listed if lease) == [SHORT_LEASE, 90], listed
    assert ("by rpc", 90) in listed
    lines = srv.deployment.cli("passkey", "list").stdout.splitlines()
    column = lines[0].index("lease s")
    shown = sorted(line[column:].split()[0] for line in lines[1:])
    # alice's and admin1's keys have the server's lease
    assert shown == ["2", "90", "default", "default"], lines


def test_retries_back_off(server: Any, db_url: str) -> None:
    delay, cap = 1.0, 3.0
    srv, owner, _key = _start(server, db_url, {"ICEPROD_RETRY_DELAY_SECONDS": str(delay),
                                               "ICEPROD_RETRY_MAX_DELAY_SECONDS": str(cap)})
    dataset_id = submit(owner, config(), njobs=1)
    pilot = Iceprod2Pilot(srv.port, srv.deployment.passkey("pilot"))
    failed_at, previous = 0.0, 0.0
    # doubling with each failure (1 s, 2 s), then held at the cap (3 s, not 4 s)
    for failure, expected in enumerate((delay, 2 * delay, cap), start=1):
        options = _claim(pilot)
        assert options["attempt"] == failure
        if failure > 1:
            waited = time.monotonic() - failed_at
            assert waited >= 0.9 * previous, f"queued again after {waited:.1f} s, " \
                                             f"before its {previous} s back-off"
        failed_at = time.monotonic()
        assert pilot.task_error(options["task_id"], f"failure {failure}")["status"] == "reset"
        info = _task(srv, options["task_id"])
        assert info["status"] == "reset" and info["failures"] == failure
        assert info["retry_after"] - info["status_changed"] == pytest.approx(expected,
                                                                             abs=0.05)
        status, page = http_get(srv.port, f"/task/{options['task_id']}")
        assert status == 200 and b"Retried after" in page
        previous = expected
    wait_counts(owner, dataset_id, {"queued": 1}, timeout=30)
