"""The dataset pages: the list, one dataset, its jobs and tasks, one job, one task.

Each page is one read of :mod:`iceprod_server.db.page_reads` rendered by a template; the
actions on them call ``/jsonrpc`` from ``static/dataset.js`` and ``static/tasks.js``, which
the server checks again whatever the page shows. Action buttons appear only for the
dataset's owner and for admins.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from typing import Any

import tornado.escape
import tornado.web

from iceprod_server.db import page_reads, reads
from iceprod_server.errors import InvalidParams, NotFound, Unavailable
from iceprod_server.handlers import logs
from iceprod_server.handlers.base import PageHandler
from iceprod_server.states import DATASET_STATES, JOB_STATES, TASK_STATES

# the order of the states in progress bars, counts tables and legends: done work first
STATE_ORDER = ("complete", "processing", "queued", "waiting", "idle", "reset", "resume",
               "suspended", "failed")
PAGE_SIZE = 100
DATASETS_PAGE_SIZE = 50
DESCRIPTION_SHOWN = 140


def progress(counts: dict[str, int]) -> dict[str, Any]:
    """What a progress bar shows: segments by state and the fraction complete."""
    total = sum(counts.values())
    complete = counts.get("complete", 0)
    fraction = complete / total if total else 0.0
    # tenths of a percent, rounded down: never 100% while a task is left
    percent = f"{complete * 1000 // total / 10:g}" if total else "0"
    segments = [(state, counts[state], 100.0 * counts[state] / total)
                for state in STATE_ORDER if total and counts.get(state)]
    return {"total": total, "complete": complete, "fraction": fraction,
            "percent": percent, "segments": segments}


def chart(throughput: dict[str, Any], width: int = 480, height: int = 170) -> dict[str, Any]:
    """Bar geometry of the throughput chart (complete and failed attempts per hour); the
    same drawing as ``drawChart`` in static/dataset.js, which redraws it live."""
    buckets = throughput["buckets"]
    left, bottom, top = 34, 18, 10
    plot_h = height - bottom - top
    peak = max([1] + [max(b["complete"], b["failed"]) for b in buckets])
    slot = (width - left) / max(1, len(buckets))
    bars = []
    for i, b in enumerate(buckets):
        x = left + i * slot
        hour = datetime.datetime.fromtimestamp(b["start"], datetime.UTC).strftime("%H:00")
        for kind, offset in (("complete", 0.1), ("failed", 0.5)):
            # a nonzero hour stays visible however tall the peak
            h = max(1.0, plot_h * b[kind] / peak) if b[kind] else 0.0
            bars.append({"kind": kind, "x": round(x + offset * slot, 1),
                         "y": round(top + plot_h - h, 1), "w": round(0.4 * slot, 1),
                         "h": round(h, 1)})
        bars[-1]["label"] = bars[-2]["label"] = (
            f"{hour} UTC: {b['complete']} complete, {b['failed']} failed")
    labels = [{"x": round(left + i * slot + slot / 2, 1),
               "text": datetime.datetime.fromtimestamp(b["start"], datetime.UTC)
               .strftime("%H:00")}
              for i, b in enumerate(buckets) if i % 6 == 0]
    return {"width": width, "height": height, "left": left, "top": top,
            "base": top + plot_h, "peak": peak, "bars": bars, "labels": labels,
            "complete": sum(b["complete"] for b in buckets),
            "failed": sum(b["failed"] for b in buckets)}


def when(t: float | None) -> str:
    if not t:
        return ""
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def number(n: float | None) -> str:
    if n is None:
        return ""
    return f"{n:,}" if isinstance(n, int) else f"{n:,.6g}"


RESOURCE_UNITS = {"cpu": "cores", "memory": "GB", "disk": "GB"}


def resources_text(used: Any) -> str:
    """Resources an attempt used, with units: "cpu 0.51 cores, memory 0.024 GB, ..."."""
    if not isinstance(used, dict):
        return ""
    parts = []
    for key, value in sorted(used.items()):
        number_like = isinstance(value, int | float) and not isinstance(value, bool)
        if key == "time" and number_like:
            parts.append(f"time {duration(value * 3600)}")
            continue
        unit = RESOURCE_UNITS.get(key, "")
        text = f"{value:.3g}" if number_like else str(value)
        parts.append(f"{key} {text} {unit}".rstrip())
    return ", ".join(parts)


def shorten(text: str, limit: int = DESCRIPTION_SHOWN) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


class DatasetPageHandler(PageHandler):
    """Helpers shared by the pages: reads that turn NotFound into a 404 page, the query
    arguments, and the formatting functions the templates use."""

    def get_template_namespace(self) -> dict[str, Any]:
        namespace = super().get_template_namespace()
        namespace.update(progress=progress, chart=chart, when=when, duration=duration,
                         number=number, shorten=shorten, resources_text=resources_text,
                         STATE_ORDER=STATE_ORDER, TASK_STATES=TASK_STATES, JOB_STATES=JOB_STATES,
                         DATASET_STATES=DATASET_STATES, url_with=self.url_with)
        return namespace

    async def load(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await self.services.db.read(fn, *args)
        except NotFound as e:
            raise tornado.web.HTTPError(404, "%s", e.reason) from e
        except InvalidParams as e:
            raise tornado.web.HTTPError(400, "%s", e.reason) from e
        except Unavailable as e:
            raise tornado.web.HTTPError(503, "%s", e.reason) from e

    def arg(self, name: str, allowed: tuple[str, ...] | None = None) -> str | None:
        value = self.get_query_argument(name, "").strip() or None
        if value is not None and allowed is not None and value not in allowed:
            raise tornado.web.HTTPError(400, "%s must be one of %s", name, ", ".join(allowed))
        return value

    def url_with(self, **changes: Any) -> str:
        """This page's URL with some query arguments changed (None removes one)."""
        args = {k: self.get_query_argument(k) for k in self.request.query_arguments}
        args.update(changes)
        escape = tornado.escape.url_escape
        query = "&".join(f"{escape(k)}={escape(str(v))}"
                         for k, v in args.items() if v not in (None, ""))
        return self.request.path + ("?" + query if query else "")

    def may_act(self, dataset: dict[str, Any]) -> bool:
        caller = self.caller
        return caller.is_admin or (caller.user_id is not None
                                   and caller.user_id == dataset.get("owner_id"))


class DatasetListHandler(DatasetPageHandler):
    async def get(self) -> None:
        sort = self.arg("sort", tuple(page_reads.DATASET_SORTS)) or "number"
        desc = self.arg("order", ("asc", "desc")) != "asc"
        status = self.arg("status", DATASET_STATES)
        owner = self.arg("owner")
        page = await self.load(page_reads.dataset_list, status, owner, sort, desc,
                               DATASETS_PAGE_SIZE, self.arg("after"))
        self.render("dataset_list.html", page=page, status=status, owner=owner, sort=sort,
                    desc=desc)


class DatasetHandler(DatasetPageHandler):
    async def get(self, ref: str) -> None:
        data = await self.load(page_reads.dataset_page, ref)
        dataset = data["dataset"]
        # what static/dataset.js starts from; the live updates replace it
        state = {key: data[key] for key in ("counts", "by_name", "throughput")}
        state["dataset"] = {key: dataset[key] for key in (
            "dataset_id", "dataset_num", "status", "priority", "njobs", "ntasks",
            "jobs_materialized")}
        self.render("dataset.html", data=data, dataset=dataset, may_act=self.may_act(dataset),
                    config_text=json.dumps(data["config"], indent=2),
                    snapshot_json=json.dumps(state))


class DatasetJobsHandler(DatasetPageHandler):
    async def get(self, ref: str) -> None:
        status = self.arg("status", JOB_STATES)
        page = await self.load(page_reads.jobs_page, ref, status,
                               PAGE_SIZE, self.arg("after"))
        self.render("jobs.html", page=page, dataset=page["dataset"], status=status)


class DatasetTasksHandler(DatasetPageHandler):
    async def get(self, ref: str) -> None:
        status = self.arg("status", TASK_STATES)
        task_name = self.arg("task_name")
        page = await self.load(page_reads.tasks_page, ref, status,
                               task_name, PAGE_SIZE, self.arg("after"))
        dataset = page["dataset"]
        self.render("tasks.html", page=page, dataset=dataset, status=status,
                    task_name=task_name, matching=page["matching"],
                    may_act=self.may_act(dataset))


class JobHandler(DatasetPageHandler):
    async def get(self, job_id: str) -> None:
        job = await self.load(page_reads.job_page, job_id)
        self.render("job.html", job=job, dataset=job["dataset"])


class TaskHandler(DatasetPageHandler):
    async def get(self, task_id: str) -> None:
        task = await self.load(page_reads.task_page, task_id)
        data_dir = self.services.config.path()
        for log in task["logs"]:
            path = log.pop("path", None)
            if "tail" not in log:
                # a big log lives in a file: read its end on the fs pool
                log["tail"] = (await self.services.run_fs(reads.tail_file, data_dir, path)
                               if path else None)
        self.render("task.html", task=task, dataset=task["dataset"],
                    may_act=self.may_act(task["dataset"]))


def routes() -> list[Any]:
    ref = r"([^/]+)"
    return [
        (r"/dataset/?", DatasetListHandler),
        (rf"/dataset/{ref}/?", DatasetHandler),
        (rf"/dataset/{ref}/jobs/?", DatasetJobsHandler),
        (rf"/dataset/{ref}/tasks/?", DatasetTasksHandler),
        (rf"/job/{ref}/?", JobHandler),
        (rf"/task/{ref}/?", TaskHandler),
        *logs.routes(),
    ]
