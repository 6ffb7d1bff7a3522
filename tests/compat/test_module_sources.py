"""Module sources given as relative paths, as IceProd 2 pilots fetch them: from
``<url>/download/<path>`` without any credentials. ``iceprod-server init`` makes the
``files/public/`` folder, and ``[files] access`` opens it to anonymous callers."""

from __future__ import annotations

from typing import Any

from tests.compat.iceprod2 import Iceprod2Pilot
from tests.support.datasets import config, module, submit, task, wait_until
from tests.support.servers import ServerProcess, http_get

SOURCE = b"#!/usr/bin/env python3\nprint('generating')\n"


def test_relative_module_sources_download_anonymously(server: Any, sqlite_url: str) -> None:
    srv: ServerProcess = server(sqlite_url,
                                env={"ICEPROD_FILES_ACCESS": "=any;public=anonymous"})
    public = srv.data_dir / "files" / "public"
    assert public.is_dir(), "iceprod-server init should make files/public"
    (public / "generate.py").write_bytes(SOURCE)
    (srv.data_dir / "files" / "private.py").write_bytes(b"secret")

    owner = srv.client(srv.deployment.passkey("user", "alice"))
    submit(owner, config(task("generate", modules=[module("gen", src="public/generate.py",
                                                          args="")])))
    pilot = Iceprod2Pilot(srv.port, srv.deployment.passkey("pilot"))
    desc = wait_until("new_task to hand out a task", pilot.new_task)[0]
    [spec] = [t for t in desc["tasks"] if t["name"] == desc["options"]["task"]]
    src = spec["trays"][0]["modules"][0]["src"]
    assert http_get(srv.port, f"/download/{src}") == (200, SOURCE)
    status, _ = http_get(srv.port, "/download/private.py")
    assert status == 401, "only public/ is open to anonymous callers"
    pilot.finish_task(desc["options"]["task_id"])

    again = srv.deployment.cli("init")
    assert f"kept {public}" in again.stdout, again.stdout
