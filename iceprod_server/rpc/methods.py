"""Imports every module that registers JSON-RPC methods, so the registry is complete."""

from __future__ import annotations

import importlib

METHOD_MODULES = (
    "iceprod_server.rpc.pilot",
    "iceprod_server.rpc.human",
    "iceprod_server.rpc.admin",
    "iceprod_server.rpc.site",
    "iceprod_server.rpc.iceprod2",
    "iceprod_server.rpc.iceprod2_reads",
    "iceprod_server.rpc.discover",
)


def load() -> None:
    for name in METHOD_MODULES:
        importlib.import_module(name)
