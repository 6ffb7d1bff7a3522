"""Builds the Tornado application: the one routing table and the one settings dict."""

from __future__ import annotations

import logging
from typing import Any

import tornado.web

from iceprod_server.handlers import health, jsonrpc
from iceprod_server.rpc import methods
from iceprod_server.rpc.dispatcher import Dispatcher
from iceprod_server.services import Services

access_log = logging.getLogger("iceprod_server.access")


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Access log: status, time and path, never a query string (it may carry a secret)."""
    status = handler.get_status()
    if status < 400:
        level = logging.DEBUG if handler.request.path == "/healthz" else logging.INFO
    elif status < 500:
        level = logging.WARNING
    else:
        level = logging.ERROR
    access_log.log(level, "%d %s %s %.1fms", status, handler.request.method,
                   handler.request.path, 1000.0 * handler.request.request_time())


def make_app(services: Services, **overrides: Any) -> tornado.web.Application:
    methods.load()
    dispatcher = Dispatcher(services)
    routes: list[Any] = [
        *health.routes(),
        *jsonrpc.routes(dispatcher),
    ]
    settings: dict[str, Any] = {
        "services": services,
        "dispatcher": dispatcher,
        "cookie_secret": services.cookie_secret,
        "xsrf_cookies": True,
        "log_function": log_request,
        "compress_response": True,
    }
    settings.update(overrides)
    return tornado.web.Application(routes, **settings)
