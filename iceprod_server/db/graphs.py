"""The points of ``public_get_graphs``: what IceProd 2.3.2's main page charted.

At the end of every ``graph_interval`` seconds (:data:`SETTLE` seconds later, so that
finishes still committing then are counted) the scheduler records two points, stamped with
the end of the interval: ``active_tasks``, the tasks of every dataset by status other than
idle, waiting and complete (from the maintained counters), and ``completed_tasks``, the
attempts that finished well during the interval (a range of the stats' ``created`` index,
so the cost is that interval's completions). A pass that comes late records the intervals
it missed, up to :data:`CATCH_UP`. Several server processes share one database: the
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
# an interval's points are recorded this long after it ends, so that a finish whose
# transaction was still committing at the end of the interval is counted in it
SETTLE = 2.0
# a late pass records at most this many missed intervals (a server that was stopped does
# not fill the time it was away)
CATCH_UP = 10
NOT_ACTIVE = ("idle", "waiting", "complete")


def boundary(now: float, interval: int) -> int:
    """The end of the last interval whose points may be recorded at ``now`` (epoch
    seconds): one that ended :data:`SETTLE` seconds ago or more."""
    return int((now - SETTLE) // interval) * interval


def record(s: Session, ats: list[int], interval: int) -> int:
    """Record the points of the intervals ending at ``ats`` (a pass that came late records
    the ones it missed, each with its own completions and the current active tasks);
    returns how many points were written (none for an interval another process recorded
    first)."""
    written = 0
    active: dict[str, int] | None = None
    for at in ats:
        if s.get(GraphPoint, (at, "active_tasks")) is not None:
            continue
        if active is None:
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
            continue  # another process recorded this interval meanwhile
        written += 2
    if written:
        s.execute(delete(GraphPoint).where(GraphPoint.at < max(ats) - KEPT * interval))
    return written


def iso(at: float) -> str:
    """A time as IceProd 2.3.2 wrote it: ISO 8601 text in UTC, without a zone."""
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def points(s: Session, start: float, interval: int) -> list[dict[str, Any]]:
    """``[{name, value, timestamp}]`` of the last ``start`` minutes, oldest first (at most
    the :data:`KEPT` intervals kept)."""
    if start < 0:
        raise InvalidParams(f"start must be a number of minutes >= 0, got {start!r}",
                            {"problems": [f"start: must be >= 0, got {start!r}"]})
    # no further back than the points kept (at the default interval when none are
    # recorded now): a huge start is no huge number in the query
    span = min(start * 60.0, float(KEPT * (interval or 60)))
    rows = s.execute(select(GraphPoint.at, GraphPoint.name, GraphPoint.value)
                     .where(GraphPoint.at >= time.time() - span)
                     .order_by(GraphPoint.at, GraphPoint.name))
    return [{"name": name, "value": value, "timestamp": iso(at)} for at, name, value in rows]
