"""User content is shown as text: a description or a log holding markup runs nothing.

The HTTP-level check (the escaped form in the raw HTML) is in tests/test_web_security.py;
this one loads the pages in chromium and watches for the payload running.
"""

from __future__ import annotations

from typing import Any

from tests.browser.helpers import Settled, Shots, Site, dataset_config, python_task
from tests.support.datasets import claim_one

PAYLOAD = "<script>window.__pwned=1</script><img src=x onerror=alert(1)>"
LOG_PAYLOAD = "<script>window.__pwned=2</script><img src=y onerror=alert(2)>"


def test_markup_in_a_description_or_a_log_is_shown_as_text(page: Any, site: Site,
                                                          shot: Shots) -> None:
    cfg = dataset_config(python_task("only", "pass"), description=PAYLOAD)
    dataset_id = site.submit("alice", cfg, njobs=2, description=PAYLOAD)
    pilot = site.srv.client(site.pilot_key, pilot_ref="escaping")
    task_id = claim_one(pilot)["options"]["task_id"]
    pilot.call("upload_logfile", task=task_id, name="stdout", data=f"before\n{LOG_PAYLOAD}\n")
    pilot.call("finish_task", task_id=task_id, stats={})

    dialogs: list[str] = []

    def dismiss(dialog: Any) -> None:
        dialogs.append(f"{page.url}: {dialog.type} {dialog.message!r}")
        dialog.dismiss()

    page.on("dialog", dismiss)
    settled = Settled(page)
    shown = {"/dataset": PAYLOAD, f"/dataset/{dataset_id}": PAYLOAD, "/": None,
             f"/task/{task_id}": LOG_PAYLOAD, f"/log/{task_id}/stdout": LOG_PAYLOAD}
    ran: list[str] = []
    missing: list[str] = []
    for path, text in shown.items():
        page.goto(path)
        # the page's own requests answered and every image failed or loaded: an injected
        # <img onerror> would have fired by now
        settled.wait()
        shot(page, path.strip("/").replace("/", "-") or "overview")
        pwned = page.evaluate("typeof window.__pwned === 'undefined' ? null : window.__pwned")
        if pwned is not None:
            ran.append(f"{path}: window.__pwned = {pwned}")
        if text and text not in page.locator("body").inner_text():
            missing.append(path)
    assert not ran, f"a payload ran: {ran}"
    assert not dialogs, f"a payload opened a dialog: {dialogs}"
    assert not missing, f"the payload should be shown as text on {missing}"
