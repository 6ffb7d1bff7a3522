"""The access log and the HTTP metrics: one record per answered request, whichever way it
was answered (a ``RequestHandler`` or the JSON-RPC fast path)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import tornado.web

from iceprod_server import metrics as prometheus

access_log = logging.getLogger("iceprod_server.access")


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Access log: status, time, caller role and path, never a query string (it may carry
    a secret)."""
    caller = getattr(handler, "caller", None)
    record_request(getattr(handler, "metrics_name", None) or type(handler).__name__,
                   handler.request.method or "", handler.request.path, handler.get_status(),
                   handler.request.request_time(), getattr(caller, "role", None),
                   getattr(handler, "request_id", ""), getattr(handler, "rpc_methods", ()))


def record_request(name: str, method: str, path: str, status: int, seconds: float,
                   role: str | None, request_id: str, rpc_methods: Sequence[str]) -> None:
    """One answered request, in the metrics and (when its level is on) the access log."""
    if status < 400:
        quiet = path == "/healthz" or path.startswith("/static/")
        level = logging.DEBUG if quiet else logging.INFO
    elif status < 500:
        level = logging.WARNING
    else:
        level = logging.ERROR
    prometheus.observe_http(name, method, status, seconds)
    if not access_log.isEnabledFor(level):
        return  # nothing more to pay for a line nobody writes
    methods_called = ",".join(rpc_methods)
    fields = {"method": method, "path": path, "status": status,
              "ms": round(1000.0 * seconds, 1), "role": role or "-", "request_id": request_id}
    if methods_called:
        fields["rpc_method"] = methods_called
    access_log.log(level, "%d %s %s%s %.1fms role=%s", status, method, path,
                   f" {methods_called}" if methods_called else "", 1000.0 * seconds,
                   role or "-", extra=fields)
