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
    # the call came the IceProd 2 way (a params object carrying ``passkey`` or ``args``):
    # where 2.3.2 answered in another shape than this server's method does, answer in 2.3.2's
    iceprod2: bool = False
