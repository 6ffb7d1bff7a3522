"""Site pages: the overview (``/``), dataset submission (``/submit``), administration
(``/admin``) and the JSON-RPC console (``/rpc``).

The pages are rendered on the server; their actions call ``/jsonrpc`` from JavaScript.
Two small helpers serve the submit page: the example configs (``conf/examples``) and a
check of a config against the schema that stores nothing (``POST /submit/validate``).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import tornado.web
from sqlalchemy.orm import Session

from iceprod_server import dataset_config, live
from iceprod_server.db import sync_master, users
from iceprod_server.examples import EXAMPLE_NAME, list_examples, read_example
from iceprod_server.federation import link
from iceprod_server.handlers.base import AdminPageHandler, BaseHandler, PageHandler
from iceprod_server.states import DATASET_STATES, TASK_STATES_SHOWN

log = logging.getLogger(__name__)


def ordered(counts: dict[str, int], order: tuple[str, ...]) -> list[tuple[str, int]]:
    """``counts`` as (state, n) pairs in the usual order of states, unknown states last."""
    known = [(state, counts[state]) for state in order if counts.get(state)]
    extra = sorted((k, v) for k, v in counts.items() if k not in order and v)
    return known + extra


def every(counts: dict[str, int], order: tuple[str, ...]) -> list[tuple[str, int]]:
    """Every state of ``order`` with its count (zeros included), then unknown states."""
    extra = sorted((k, v) for k, v in counts.items() if k not in order and v)
    return [(state, counts.get(state, 0)) for state in order] + extra


def when(t: float | None) -> str:
    """An epoch time as ``YYYY-MM-DD HH:MM UTC``, as the pages' scripts show times."""
    if not t:
        return ""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def percent(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else 0.0


# --- units of work -----------------------------------------------------------------------

def _admin_lists(s: Session) -> dict[str, Any]:
    return {"users": users.list_users(s), "passkeys": users.list_passkeys(s),
            "groups": users.list_groups(s), "sites": users.list_sites(s),
            "site_links": sync_master.site_status(s, time.time())}


def _group_names(s: Session) -> list[str]:
    return [g["name"] for g in users.list_groups(s)]


# --- pages -------------------------------------------------------------------------------

class OverviewHandler(PageHandler):
    async def get(self) -> None:
        snapshot = await self.services.db.read(live.overview_snapshot)
        site_link = link.current.status() if link.current is not None else None
        self.render("overview.html", snapshot=snapshot, task_states=TASK_STATES_SHOWN,
                    dataset_states=DATASET_STATES, ordered=ordered, every=every,
                    percent=percent, site_link=site_link, when=when)


class SubmitHandler(PageHandler):
    public = False

    async def get(self) -> None:
        examples = await self.services.run_fs(list_examples)
        groups = await self.services.db.read(_group_names)
        self.render("submit.html", examples=examples, groups=groups)


class ExampleHandler(PageHandler):
    public = False

    def wants_json(self) -> bool:
        return True

    async def get(self, name: str) -> None:
        text = await self.services.run_fs(read_example, name)
        if text is None:
            raise tornado.web.HTTPError(404, f"no example {name}")
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.finish(text)


class ValidateHandler(BaseHandler):
    """``POST /submit/validate`` ``{"config": object or JSON text}`` -> ``{"problems":
    [...]}``, the same checks as ``submit_dataset`` makes before it stores anything (all
    but the existence of other datasets' tasks named in ``depends``)."""

    def wants_json(self) -> bool:
        return True

    async def post(self) -> None:
        if self.caller.role not in ("user", "admin"):
            raise tornado.web.HTTPError(403, "log in to check a dataset config")
        if len(self.request.body) > self.services.config.max_body_bytes:
            raise tornado.web.HTTPError(413, "config too large")
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError as e:
            raise tornado.web.HTTPError(400, "the request is not JSON") from e
        if not isinstance(body, dict) or "config" not in body:
            raise tornado.web.HTTPError(400, 'expected {"config": ...}')
        try:
            config = dataset_config.parse(body["config"])
        except ValueError as e:
            self.finish({"problems": [f"$: {e}"]})
            return
        self.finish({"problems": dataset_config.validate(config)})


class AdminHandler(AdminPageHandler):
    async def get(self) -> None:
        lists = await self.services.db.read(_admin_lists)
        self.render("admin.html", when=when, **lists)


class ConsoleHandler(PageHandler):
    def get(self) -> None:
        self.render("console.html")


def routes() -> list[tuple[str, type]]:
    return [
        (r"/", OverviewHandler),
        (r"/submit", SubmitHandler),
        (rf"/submit/examples/({EXAMPLE_NAME})", ExampleHandler),
        (r"/submit/validate", ValidateHandler),
        (r"/admin", AdminHandler),
        (r"/rpc", ConsoleHandler),
    ]
