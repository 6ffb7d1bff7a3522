"""Who may download, upload and use the proxy.

A rule is a comma-separated list of roles: ``any`` (any valid passkey or login),
``anonymous`` (no credential needed), or ``pilot``, ``user``, ``admin``, ``site``. Rules
are set per directory (``[files] access``, the longest matching directory wins) and for
the proxy (``[proxy] access``).
"""

from __future__ import annotations

from collections.abc import Mapping

from iceprod_server.caller import Caller


def rule_for(access: Mapping[str, str], relpath: str) -> str:
    """The rule of the longest directory in ``access`` that contains ``relpath``."""
    parts = [p for p in relpath.strip("/").split("/") if p]
    for n in range(len(parts), -1, -1):
        key = "/".join(parts[:n])
        if key in access:
            return access[key]
    return "any"


def allows(rule: str, caller: Caller) -> bool:
    """Whether ``caller`` passes ``rule``."""
    roles = {r.strip() for r in rule.split(",") if r.strip()}
    if "anonymous" in roles:
        return True
    if caller.role is None:
        return False
    return "any" in roles or caller.role in roles
