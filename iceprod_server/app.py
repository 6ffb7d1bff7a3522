"""Builds the Tornado application: the one routing table and the one settings dict."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import tornado.web

from iceprod_server import metrics as prometheus
from iceprod_server.handlers import (
    files,
    health,
    jsonrpc,
    live,
    login,
    metrics,
    pages_datasets,
    pages_site,
    proxy,
)
from iceprod_server.rpc import methods
from iceprod_server.rpc.dispatcher import Dispatcher
from iceprod_server.services import Services

access_log = logging.getLogger("iceprod_server.access")
PACKAGE = Path(__file__).resolve().parent


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Access log: status, time, caller role and path, never a query string (it may carry
    a secret)."""
    status = handler.get_status()
    if status < 400:
        quiet = handler.request.path == "/healthz" or handler.request.path.startswith(
            "/static/")
        level = logging.DEBUG if quiet else logging.INFO
    elif status < 500:
        level = logging.WARNING
    else:
        level = logging.ERROR
    seconds = handler.request.request_time()
    name = getattr(handler, "metrics_name", None) or type(handler).__name__
    prometheus.HTTP_REQUESTS.labels(handler=name, method=handler.request.method or "",
                                    status=str(status)).inc()
    prometheus.HTTP_SECONDS.labels(handler=name).observe(seconds)
    if not access_log.isEnabledFor(level):
        return  # nothing more to pay for a line nobody writes
    caller = getattr(handler, "caller", None)
    role = getattr(caller, "role", None) or "-"
    rpc_methods = ",".join(getattr(handler, "rpc_methods", ()))
    fields = {"method": handler.request.method, "path": handler.request.path,
              "status": status, "ms": round(1000.0 * seconds, 1), "role": role,
              "request_id": getattr(handler, "request_id", "")}
    if rpc_methods:
        fields["rpc_method"] = rpc_methods
    access_log.log(level, "%d %s %s%s %.1fms role=%s", status, handler.request.method,
                   handler.request.path, f" {rpc_methods}" if rpc_methods else "",
                   1000.0 * seconds, role, extra=fields)


def make_app(services: Services, **overrides: Any) -> tornado.web.Application:
    methods.load()
    dispatcher = Dispatcher(services)
    routes: list[Any] = [
        *health.routes(),
        *metrics.routes(),
        *jsonrpc.routes(dispatcher),
        *login.routes(),
        *pages_site.routes(),
        *pages_datasets.routes(),
        *live.routes(services.live),
        *files.routes(),
        *proxy.routes(),
    ]
    settings: dict[str, Any] = {
        "services": services,
        "dispatcher": dispatcher,
        "cookie_secret": services.cookie_secret,
        "xsrf_cookies": True,
        "xsrf_cookie_kwargs": {"samesite": "Strict"},
        "login_url": "/login",
        "template_path": str(PACKAGE / "templates"),
        "static_path": str(PACKAGE / "static"),
        "log_function": log_request,
        "compress_response": True,
    }
    settings.update(overrides)
    return tornado.web.Application(routes, **settings)
