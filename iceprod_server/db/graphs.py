"""The points of ``public_get_graphs``: what IceProd 2.3.2's main page charted.

At the end of every ``graph_interval`` seconds the scheduler records two points, stamped
with that moment: ``active_tasks``, the tasks of every dataset by status other than idle,
waiting and complete (from the maintained counters), and ``completed_tasks``, the attempts
that finished well during the interval (a range of the stats' ``created`` index, so the
cost is that interval's completions). Several server processes share one database: the
first to record an interval's points keeps them, the others find them there. Only the last
:data:`KEPT` intervals are kept, so an answer holds at most ``2 * KEPT`` points.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

from sqlalchemy import delete, false, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from iceprod_server.db import reads
from iceprod_server.db.models import GraphPoint, TaskStat
from iceprod_server.errors import InvalidParams

# intervals kept: a week at the default interval of 60 s
KEPT = 10080
NOT_ACTIVE = ("idle", "waiting", "complete")


def boundary(now: float, interval: int) -> int:
    """The end of the last whole interval at ``now`` (epoch seconds)."""
    return int(now // interval) * interval


def record(s: Session, at: int, interval: int) -> int:
    """Record the points of the interval ending at ``at``; returns how many were written
    (0 when another process recorded them first)."""
    if s.get(GraphPoint, (at, "active_tasks")) is not None:
        return 0
    active = {status: n for status, n in reads.system_task_counts(s).items()
              if status not in NOT_ACTIVE and n}
    completions = s.scalar(select(func.count()).select_from(TaskStat).where(
        TaskStat.created >= at - interval, TaskStat.created < at,
        TaskStat.error == false())) or 0
    try:
        with s.begin_nested():
            s.add_all([GraphPoint(at=at, name="active_tasks", value=active),
                       GraphPoint(at=at, name="completed_tasks",
                                  value={"completions": int(completions)})])
            s.flush()
    except IntegrityError:
        return 0  # another process recorded this interval meanwhile
    s.execute(delete(GraphPoint).where(GraphPoint.at < at - KEPT * interval))
    return 2


def iso(at: float) -> str:
    """A time as IceProd 2.3.2 wrote it: ISO 8601 text in UTC, without a zone."""
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def points(s: Session, start: float, interval: int) -> list[dict[str, Any]]:
    """``[{name, value, timestamp}]`` of the last ``start`` minutes, oldest first (at most
    the :data:`KEPT` intervals kept)."""
    if start < 0:
        raise InvalidParams(f"start must be a number of minutes >= 0, got {start!r}",
                            {"problems": [f"start: must be >= 0, got {start!r}"]})
    span = start * 60.0
    if interval > 0:
        span = min(span, float(KEPT * interval))
    rows = s.execute(select(GraphPoint.at, GraphPoint.name, GraphPoint.value)
                     .where(GraphPoint.at >= time.time() - span)
                     .order_by(GraphPoint.at, GraphPoint.name))
    return [{"name": name, "value": value, "timestamp": iso(at)} for at, name, value in rows]
