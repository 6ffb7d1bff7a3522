"""How ``iceprod-server serve`` logs: text or one JSON object per line, with the id of the
request that a line belongs to.

A request's id comes from nginx (``X-Request-Id``, believed only from ``trusted_proxy``)
or is made here; it is returned in the answer's ``X-Request-Id`` and kept in a context
variable, so every line logged while the request is handled carries it (also from the
thread pools, which run each unit of work in the caller's context). A user who quotes the
id of a failed call lets an operator find every line about it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import random
import re
import sys
import time
from typing import Any

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
# what an id from nginx may look like; anything else is replaced by one of ours
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# fields of the access log line (set with ``extra=``) that a JSON line carries
REQUEST_FIELDS = ("method", "path", "rpc_method", "status", "ms", "role")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def new_request_id(given: str | None) -> str:
    if given and _VALID_ID.match(given):
        return given
    # an id for the logs, not a secret: the cheap generator (reseeded in forked workers)
    return f"{random.getrandbits(64):016x}"  # noqa: S311


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every record (an empty string outside requests)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id = getattr(record, "request_id", "")
        return f"{text} [request {request_id}]" if request_id else text


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the request's id and, for
    the access log, the request's fields; an exception's traceback as ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", "")
        if request_id:
            line["request_id"] = request_id
        for field in REQUEST_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure(level: int, log_format: str) -> None:
    """Log to stderr at ``level`` in ``log_format`` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
