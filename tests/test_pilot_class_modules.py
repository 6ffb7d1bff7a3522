"""IceProd 2 class modules (a ``running_class`` and no ``src``) under the reference pilot.

Such a module needs an IceTray environment, which only IceProd 2's own pilot provides. The
reference pilot must not report its task complete having computed nothing: the task is an
error saying so, unless the pilot runs with ``--skip-class-modules``, which it logs loudly
and records in the attempt's stats.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from tests.support.datasets import config, counts, module, submit, task, wait_counts
from tests.support.servers import ICEPROD_PILOT, ServerProcess, clean_environ

CLASS = "icecube.simprod.modules.CorsikaGenerator"


def class_module() -> dict[str, Any]:
    return {"name": "corsika", "running_class": CLASS, "src": "",
            "args": {"nevents": "$eval($steering(nevents)//2)"}, "env_shell": None,
            "env_clear": True}


def run_pilot(srv: ServerProcess, tmp_path: Path, *extra: str) -> str:
    """One pilot that runs one task and exits; returns its log."""
    log_path = tmp_path / "pilot.log"
    with log_path.open("wb") as log:
        proc = subprocess.run(
            [ICEPROD_PILOT, "--url", srv.url, "--passkey", srv.deployment.passkey("pilot"),
             "--max-tasks", "1", "--exit-when-idle", "20", "--poll-interval", "0.5",
             "--cpu", "1", "--memory", "1", "--disk", "1", "--time", "1",
             "--scratch", str(tmp_path / "scratch"), *extra],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=clean_environ(), timeout=120, check=False)
    text = log_path.read_text()
    assert proc.returncode == 0, f"iceprod-pilot exited with {proc.returncode}:\n{text[-3000:]}"
    return text


def one_class_task(srv: ServerProcess) -> tuple[str, str]:
    user = srv.client(srv.deployment.passkey("user", "alice"))
    # a debug dataset suspends a task at its first error, so one pilot run decides it
    cfg = config(task("sim", modules=[module("before", args=["-c", "print('plain module ran')"]),
                                      class_module()]))
    dataset_id = submit(user, cfg, debug=True)
    wait_counts(srv.client(), dataset_id, {"queued": 1})
    tasks = srv.client().call("public_get_tasks", dataset_id=dataset_id)["items"]
    return dataset_id, str(tasks[0]["task_id"])


def test_class_module_is_an_error_without_the_flag(server: Any, db_url: str,
                                                   tmp_path: Path) -> None:
    srv = server(db_url)
    dataset_id, task_id = one_class_task(srv)
    run_pilot(srv, tmp_path)
    assert counts(srv.client(), dataset_id) == {"suspended": 1}
    attempts = srv.client().call("public_get_task", task_id=task_id)["attempts"]
    assert len(attempts) == 1 and attempts[0]["error"], attempts
    message = attempts[0]["stats"]["error"]
    assert "needs an IceTray environment" in message, message
    assert "corsika" in message and CLASS in message, message


def test_skip_class_modules_completes_and_says_so(server: Any, db_url: str,
                                                  tmp_path: Path) -> None:
    srv = server(db_url)
    dataset_id, task_id = one_class_task(srv)
    log = run_pilot(srv, tmp_path, "--skip-class-modules")
    assert counts(srv.client(), dataset_id) == {"complete": 1}
    assert "WARNING" in log and "--skip-class-modules" in log, log[-3000:]
    assert "NOT RUN" in log and CLASS in log, log[-3000:]
    detail = srv.client().call("public_get_task", task_id=task_id)
    attempts = detail["attempts"]
    assert len(attempts) == 1 and not attempts[0]["error"], attempts
    skipped = attempts[0]["stats"]["skipped_class_modules"]
    assert len(skipped) == 1 and CLASS in skipped[0], skipped
