"""Builds the Tornado application: the one routing table and the one settings dict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tornado.web

from iceprod_server.handlers import (
    access,
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

PACKAGE = Path(__file__).resolve().parent


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
        "log_function": access.log_request,
        "compress_response": True,
    }
    settings.update(overrides)
    return tornado.web.Application(routes, **settings)
