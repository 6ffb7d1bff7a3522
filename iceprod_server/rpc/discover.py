"""``rpc.discover``: an OpenRPC 1.2.6 description of every method, built from the registry.

The description is generated from what the dispatcher itself enforces (parameter names and
annotations, roles, declared errors) and each method's docstring, so it cannot drift from
the code.
"""

from __future__ import annotations

import inspect
from typing import Any

from iceprod_server import __version__
from iceprod_server.errors import MESSAGES
from iceprod_server.rpc.context import Context
from iceprod_server.rpc.registry import (
    ANYONE,
    ICEPROD2,
    NOT_SERVED,
    REGISTRY,
    Method,
    json_schema,
    rpc_method,
)

OPENRPC_VERSION = "1.2.6"


def method_description(method: Method) -> dict[str, Any]:
    params = []
    for p in method.params:
        schema = json_schema(method.hints.get(p.name, Any))
        entry: dict[str, Any] = {"name": p.name,
                                 "required": p.default is inspect.Parameter.empty,
                                 "schema": schema}
        if isinstance(p.default, str | int | float | bool | list | dict | type(None)):
            entry["schema"] = {**schema, "default": p.default}
        params.append(entry)
    doc = method.doc
    form = ICEPROD2.get(method.name)
    extra: dict[str, Any] = {}
    if form is not None:
        # the method answers under its IceProd 2.3.2 name, to 2.3.2's clients too
        extra["x-iceprod2"] = {"params": list(form.params), "maps_to": form.maps_to,
                               "refused": sorted(form.refused)}
    return {
        "name": method.name,
        "summary": doc.split("\n\n", 1)[0].replace("\n", " ") if doc else "",
        "description": doc,
        "paramStructure": "either",
        "params": params,
        "result": {"name": f"{method.name}_result",
                   "schema": json_schema(method.hints.get("return", Any))},
        "x-roles": sorted(method.roles),
        "x-errors": [{"code": code, "message": MESSAGES.get(code, "")}
                     for code in sorted(set(method.errors), reverse=True)],
        **extra,
    }


def document() -> dict[str, Any]:
    return {
        "openrpc": OPENRPC_VERSION,
        "info": {"title": "IceProd server", "version": __version__,
                 "description": "JSON-RPC 2.0 methods served at POST /jsonrpc. x-roles names "
                                "who may call each method: public (anyone while public_read "
                                "is on), anyone, pilot, user, admin, site. x-iceprod2 marks "
                                "the methods IceProd 2.3.2 had under the same name, with "
                                "its params in its positional order (an args list binds "
                                "to them)."},
        "methods": [method_description(REGISTRY[name]) for name in sorted(REGISTRY)],
        # IceProd 2.3.2 methods not served here: -32601 with what replaces each
        "x-iceprod2-not-served": [{"name": name, "params": list(params), "reason": reason}
                                  for name, (params, reason) in sorted(NOT_SERVED.items())],
    }


@rpc_method(ANYONE, name="rpc.discover")
async def rpc_discover(ctx: Context) -> dict[str, Any]:
    """This document: every method with its params, result, roles and errors (OpenRPC)."""
    return document()
