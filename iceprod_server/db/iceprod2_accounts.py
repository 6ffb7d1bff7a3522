"""IceProd 2.3.2's groups and roles, mapped onto this server's groups and users.

A 2.3.2 group ``{groups_id: {name, description, priority}}`` is a group here, its id the
``groups_id``. A 2.3.2 user's roles are this server's role of the user: ``{"user": ...}``
or ``{"admin": ...}``, and none for a disabled user; setting no roles disables the user,
setting ``user`` or ``admin`` enables them with that role. Every change is checked whole
before anything is written, and audited in the same transaction.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from iceprod_server.db import audit
from iceprod_server.db.audit import Actor
from iceprod_server.db.ids import new_id
from iceprod_server.db.models import Dataset, Group, User
from iceprod_server.errors import Conflict, InvalidParams, NotFound

NAME_CHARS = 128
DESCRIPTION_CHARS = 1024
ROLE_NAMES = ("user", "admin")


def _group_dict(g: Group) -> dict[str, Any]:
    return {"groups_id": g.group_id, "name": g.name, "description": g.description,
            "priority": g.priority}


def get_groups(s: Session) -> dict[str, dict[str, Any]]:
    return {g.group_id: _group_dict(g)
            for g in s.scalars(select(Group).order_by(Group.name))}


def _checked_groups(groups: dict[str, Any]) -> dict[str, tuple[str, str, float]]:
    """groups_id -> (name, description, priority), or InvalidParams listing every
    problem."""
    problems: list[str] = []
    out: dict[str, tuple[str, str, float]] = {}
    for key, group in groups.items():
        where = f"groups.{key}"
        if not isinstance(group, dict):
            problems.append(f"{where}: expected an object {{name, description, priority}}")
            continue
        unknown = sorted(set(group) - {"name", "description", "priority", "groups_id"})
        if unknown:
            problems.append(f"{where}: unknown keys {', '.join(unknown)}")
        name = group.get("name")
        description = group.get("description", "")
        priority = group.get("priority", 1.0)
        if not isinstance(name, str) or not 1 <= len(name) <= NAME_CHARS:
            problems.append(f"{where}.name: a string of 1 to {NAME_CHARS} characters")
        if description is None:
            description = ""
        if not isinstance(description, str) or len(description) > DESCRIPTION_CHARS:
            problems.append(f"{where}.description: a string of at most "
                            f"{DESCRIPTION_CHARS} characters")
        if (isinstance(priority, bool) or not isinstance(priority, int | float)
                or not math.isfinite(priority) or priority < 0):
            problems.append(f"{where}.priority: a number >= 0")
        if not problems:
            out[key] = (str(name), str(description), float(priority))
    names = [entry[0] for entry in out.values()]
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        problems.append(f"groups: names given twice: {', '.join(doubled)}")
    if problems:
        raise InvalidParams("invalid groups: " + problems[0], {"problems": problems[:50]})
    return out


def set_groups(s: Session, actor: Actor, groups: dict[str, Any]) -> dict[str, int]:
    """Make the stored groups exactly ``groups``: ids not given are deleted, given ids that
    exist are updated, other ids are added (with ids of their own). A group that datasets
    still use cannot be deleted (-32004, nothing changes)."""
    wanted = _checked_groups(groups)
    existing = {g.group_id: g for g in s.scalars(select(Group).with_for_update())}
    gone = [gid for gid in existing if gid not in wanted]
    if gone:
        used = list(s.execute(select(Dataset.group_id, func.count()).where(
            Dataset.group_id.in_(gone)).group_by(Dataset.group_id)))
        if used:
            names = [f"{existing[str(gid)].name} ({n} datasets)" for gid, n in used]
            raise Conflict("groups still used by datasets cannot be deleted: "
                           + ", ".join(names), {"groups": [str(gid) for gid, _ in used]})
    for gid in gone:
        s.delete(existing[gid])
    s.flush()
    updated = 0
    renamed = [gid for gid in wanted if gid in existing and existing[gid].name != wanted[gid][0]]
    for gid in renamed:
        # names are unique: free them all before any group takes another's old name
        existing[gid].name = "~" + gid
    s.flush()
    for gid, (name, description, priority) in wanted.items():
        g = existing.get(gid)
        if g is None:
            continue
        if gid in renamed or (g.description, g.priority) != (description, priority):
            g.name, g.description, g.priority = name, description, priority
            updated += 1
    s.flush()
    created = 0
    for gid, (name, description, priority) in wanted.items():
        if gid not in existing:
            s.add(Group(group_id=new_id(), name=name, priority=priority,
                        description=description))
            created += 1
    s.flush()
    result = {"created": created, "updated": updated, "deleted": len(gone)}
    audit.record(s, actor, "set_groups", f"{len(wanted)} groups",
                 {"groups": sorted(n for n, _, _ in wanted.values()), **result},
                 created + updated + len(gone))
    return result


def _user(s: Session, username: str) -> User:
    user = s.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFound(f"no user {username!r}", {"username": username})
    return user


def user_roles(s: Session, username: str) -> dict[str, dict[str, str]]:
    user = _user(s, username)
    if user.disabled:
        return {}
    return {user.role: {"roles_id": user.role, "role_name": user.role}}


def set_user_roles(s: Session, actor: Actor, username: str,
                   roles: list[str]) -> dict[str, Any]:
    """The user's roles become ``roles``: none disables the user; ``user`` or ``admin``
    (both: admin) enables them with that role."""
    unknown = sorted({r for r in roles if r not in ROLE_NAMES})
    if unknown:
        reason = (f"roles: unknown roles {', '.join(map(repr, unknown))}; this server's "
                  f"roles are {', '.join(ROLE_NAMES)}")
        raise InvalidParams(reason, {"problems": [reason]})
    user = _user(s, username)
    if roles:
        user.role = "admin" if "admin" in roles else "user"
        user.disabled = False
    else:
        user.disabled = True
    s.flush()
    audit.record(s, actor, "set_user_roles", username, {"roles": sorted(set(roles))}, 1)
    return {"username": username, "role": user.role, "disabled": user.disabled}
