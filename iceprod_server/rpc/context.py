"""What a JSON-RPC method may reach while it runs: its caller and the services."""

from __future__ import annotations

from dataclasses import dataclass

from iceprod_server.caller import Caller
from iceprod_server.services import Services


@dataclass
class Context:
    caller: Caller
    services: Services
    remote_ip: str = ""
