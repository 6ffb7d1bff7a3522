"""How long each string parameter may be: the size of the column it is stored in.

MariaDB refuses a value longer than its column ("Data too long") and SQLite stores it; both
would differ from each other, and the first is an internal error. So every string parameter
is checked before the method runs, against the column it ends up in (read from the models,
so the two cannot drift apart), or :data:`DEFAULT_CHARS` when it is a filter or is not
stored. Too long is -32602, naming the parameter.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import String, Text
from sqlalchemy.orm import InstrumentedAttribute

from iceprod_server.db import models as m

# strings that are not stored, or not listed below (filters, statuses, task names)
DEFAULT_CHARS = 255
# a MariaDB TEXT column holds 65,535 bytes of UTF-8
TEXT_BYTES = 65535
# parameters stored in LONGTEXT columns (configs, logs), or hashed (passwords): limited
# only by the request body size
UNLIMITED = -1

_COLUMNS: dict[tuple[str, str], InstrumentedAttribute[Any] | int] = {
    ("echo", "value"): UNLIMITED,
    ("create_group", "name"): m.Group.name,
    ("create_group", "description"): m.Group.description,
    ("set_group_priority", "name"): m.Group.name,
    ("create_user", "username"): m.User.username,
    ("create_user", "password"): 1024,
    ("disable_user", "username"): m.User.username,
    ("set_user_role", "username"): m.User.username,
    ("get_user_roles", "username"): m.User.username,
    ("set_user_roles", "username"): m.User.username,
    ("issue_passkey", "username"): m.User.username,
    ("issue_passkey", "site"): m.Site.name,
    ("issue_passkey", "description"): m.Passkey.description,
    ("register_site", "name"): m.Site.name,
    ("register_site", "cert_dn"): m.Site.cert_dn,
    ("rotate_site_key", "site"): m.Site.name,
    ("set_site_cert_dn", "site"): m.Site.name,
    ("set_site_cert_dn", "cert_dn"): m.Site.cert_dn,
    ("list_audit_log", "actor"): m.AuditLog.actor,
    ("submit_dataset", "config"): UNLIMITED,
    ("submit_dataset", "difplus"): UNLIMITED,
    ("submit_dataset", "description"): m.Dataset.description,
    ("submit_dataset", "gridspec"): m.Dataset.gridspec,
    ("submit_dataset", "group"): m.Group.name,
    ("update_dataset_config", "config"): UNLIMITED,
    ("update_dataset_config", "description"): m.Dataset.description,
    ("new_task", "gridspec"): m.Dataset.gridspec,
    ("new_task", "hostname"): m.TaskStat.hostname,
    ("new_task", "os"): m.Task.req_os,
    ("update_pilot", "pilot_id"): m.Pilot.pilot_id,
    ("update_pilot", "hostname"): m.Pilot.hostname,
    ("upload_logfile", "name"): m.TaskLog.name,
    ("upload_logfile", "data"): UNLIMITED,
    **{(method, "request_key"): m.RequestKey.request_key
       for method in ("submit_dataset", "create_user", "issue_passkey", "create_group",
                      "register_site", "new_task")},
}


def _limit(method: str, param: str) -> tuple[int, str]:
    """(size, unit): unit "chars" or "bytes"; size UNLIMITED for none."""
    column = _COLUMNS.get((method, param), DEFAULT_CHARS)
    if isinstance(column, int):
        return column, "chars"
    kind = column.property.columns[0].type
    if isinstance(kind, String) and kind.length:
        return kind.length, "chars"
    if isinstance(kind, Text):
        return TEXT_BYTES, "bytes"
    return UNLIMITED, "chars"


def size_problem(method: str, param: str, value: Any) -> str:
    """What is wrong with the size of ``value`` for ``method``'s ``param``, or ""."""
    values = value if isinstance(value, list) else [value]
    size, unit = _limit(method, param)
    if size == UNLIMITED:
        return ""
    for item in values:
        if not isinstance(item, str):
            continue
        length = len(item.encode("utf-8", "surrogatepass")) if unit == "bytes" else len(item)
        if length > size:
            return f"{param}: at most {size} {unit}, got {length}"
    return ""

