"""Methods for admins: users, passkeys, groups and sites; and ``whoami`` for anyone.

Each change is written to the audit log in the transaction that makes it. Secrets (a new
passkey, a site key) appear once, in the result of the call that makes them, and are never
logged. The calls that create (users, passkeys, groups, sites) take a ``request_key``: a
repeat with the same key answers the first result and creates nothing; a repeat of a call
that made a secret gets a new secret for the same passkey or site, since the server keeps
none in the clear. A site is named by the param ``site`` (its id or its name): a named param
``site_id`` is a caller's credential, taken by the dispatcher before any method runs.
"""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy.orm import Session

from iceprod_server.db import audit, reads, request_keys, users
from iceprod_server.errors import (
    CONFLICT,
    FORBIDDEN,
    INVALID_PARAMS,
    NOT_AUTHENTICATED,
    NOT_FOUND,
    OUTCOME_UNKNOWN,
    UNAVAILABLE,
)
from iceprod_server.rpc import human
from iceprod_server.rpc.context import Context
from iceprod_server.rpc.registry import ADMIN, ANYONE, Id, rpc_method

ERRORS = (INVALID_PARAMS, NOT_AUTHENTICATED, FORBIDDEN, NOT_FOUND, CONFLICT, UNAVAILABLE,
          OUTCOME_UNKNOWN)
READ_ERRORS = (NOT_AUTHENTICATED, FORBIDDEN, UNAVAILABLE)


async def _audited(ctx: Context, method: str, target: str, params: dict[str, Any],
                   fn: Any, *args: Any) -> Any:
    return await ctx.services.db.write(audit.audited, human.actor(ctx), method, target, params,
                                       fn, *args)


async def _created(ctx: Context, request_key: str | None, method: str, target: str,
                   params: dict[str, Any], fn: Any, *args: Any, hidden: str | None = None,
                   reissue: Any = None) -> Any:
    """An audited call that creates a row, once per ``request_key``. ``target`` and
    ``params`` (which hold no secrets: a password is not part of what tells a repeat from
    another call) tell a repeat from another call."""
    key = request_keys.check(request_key)
    return await ctx.services.db.write(
        request_keys.once, ctx.caller.actor, key, method, {**params, "(target)": target},
        audit.audited,
        human.actor(ctx), method, target, params, fn, *args, hidden=hidden, reissue=reissue)


@rpc_method(ANYONE)
async def whoami(ctx: Context) -> dict[str, Any]:
    """Who the server thinks is calling: ``{role, username, key_id, site_id}`` (all null
    for an anonymous caller)."""
    c = ctx.caller
    return {"role": c.role, "username": c.username, "key_id": c.key_id, "site_id": c.site_id}


# --- users ------------------------------------------------------------------------------

@rpc_method(ADMIN, errors=ERRORS)
async def create_user(ctx: Context, username: str, password: str,
                      role: Literal["user", "admin"] = "user",
                      request_key: str | None = None) -> dict[str, Any]:
    """Create a user who logs in with ``password`` (at least 8 characters). A repeat with
    the same ``request_key`` answers the first result."""
    return await _created(ctx, request_key, "create_user", username,
                          {"username": username, "role": role},
                          users.create_user, username, password, role)


@rpc_method(ADMIN, errors=ERRORS)
async def set_user_role(ctx: Context, username: str,
                        role: Literal["user", "admin"]) -> dict[str, Any]:
    """Make a user an admin, or an admin a user."""
    return await _audited(ctx, "set_user_role", username, {"role": role},
                          users.set_user, username, role)


@rpc_method(ADMIN, errors=ERRORS)
async def disable_user(ctx: Context, username: str, disabled: bool = True) -> dict[str, Any]:
    """Disable a user (their logins and passkeys stop working at once), or enable them
    again with ``disabled: false``."""
    return await _audited(ctx, "disable_user", username, {"disabled": disabled},
                          users.set_user, username, None, disabled)


@rpc_method(ADMIN, errors=READ_ERRORS)
async def list_users(ctx: Context) -> list[dict[str, Any]]:
    """Every user: user_id, username, role, disabled, created."""
    return await ctx.services.db.read(users.list_users)


# --- passkeys ---------------------------------------------------------------------------

@rpc_method(ADMIN, errors=ERRORS)
async def issue_passkey(ctx: Context, role: Literal["pilot", "user", "admin"],
                        username: str | None = None, expires: float | None = None,
                        description: str = "", lease: float | None = None,
                        request_key: str | None = None) -> dict[str, Any]:
    """Issue a passkey with a role, optionally bound to a user (required for role user),
    expiring after ``expires`` seconds (null: never). ``lease``: seconds a task claimed
    with the key lives without a call about it (null: the server's ``lease_seconds``).
    The result holds the key itself, ``passkey``: this is the only time it is shown.
    Keys are not bound to sites: a site calls with its site key. A repeat with the same
    ``request_key`` answers the same key_id with a new ``passkey`` (the first one stops
    working)."""
    actor = human.actor(ctx)

    def reissue(s: Session, first: dict[str, Any]) -> str:
        key_id = str(first["key_id"])
        audit.record(s, actor, "issue_passkey", key_id, {"repeated": True}, 1)
        return users.new_passkey_secret(s, key_id)

    return await _created(
        ctx, request_key, "issue_passkey", username or role,
        {"role": role, "username": username, "expires": expires,
         "description": description, "lease": lease},
        users.issue_passkey, role, username, expires, description, lease,
        hidden="passkey", reissue=reissue)


@rpc_method(ADMIN, errors=ERRORS)
async def revoke_passkey(ctx: Context, key_id: Id) -> dict[str, Any]:
    """Revoke a passkey by its key_id; it stops working at once."""
    rows = await _audited(ctx, "revoke_passkey", key_id, {"key_id": key_id},
                          users.revoke_passkey, key_id)
    return {"key_id": key_id, "revoked": bool(rows)}


@rpc_method(ADMIN, errors=READ_ERRORS)
async def list_passkeys(ctx: Context) -> list[dict[str, Any]]:
    """Every passkey (never the key itself): key_id, role, username, site_id, description,
    created, expires, revoked, expired, lease_seconds."""
    return await ctx.services.db.read(users.list_passkeys)


# --- groups -----------------------------------------------------------------------------

@rpc_method(ADMIN, errors=ERRORS)
async def create_group(ctx: Context, name: str, priority: float = 1.0,
                       description: str = "", request_key: str | None = None
                       ) -> dict[str, Any]:
    """Create a group; datasets submitted with it share its priority (a number >= 0). A
    repeat with the same ``request_key`` answers the first result."""
    return await _created(ctx, request_key, "create_group", name,
                          {"priority": priority, "description": description},
                          users.create_group, name, priority, description)


@rpc_method(ADMIN, errors=ERRORS)
async def set_group_priority(ctx: Context, name: str, priority: float) -> dict[str, Any]:
    """Set a group's priority (a number >= 0)."""
    return await _audited(ctx, "set_group_priority", name, {"priority": priority},
                          users.set_group_priority, name, priority)


@rpc_method(ADMIN, errors=READ_ERRORS)
async def list_groups(ctx: Context) -> list[dict[str, Any]]:
    """Every group: group_id, name, priority, description."""
    return await ctx.services.db.read(users.list_groups)


# --- sites ------------------------------------------------------------------------------

@rpc_method(ADMIN, errors=ERRORS)
async def register_site(ctx: Context, name: str, cert_dn: str | None = None,
                        request_key: str | None = None) -> dict[str, Any]:
    """Register a peer site, optionally with the subject DN of its client certificate. The
    result holds the site's key, ``site_key``: this is the only time it is shown. A repeat
    with the same ``request_key`` answers the same site with a new ``site_key`` (the first
    one stops working)."""
    actor = human.actor(ctx)

    def reissue(s: Session, first: dict[str, Any]) -> str:
        site_id = str(first["site_id"])
        audit.record(s, actor, "register_site", name, {"repeated": True}, 1)
        return str(users.rotate_site_key(s, site_id)["site_key"])

    return await _created(ctx, request_key, "register_site", name, {"cert_dn": cert_dn},
                          users.register_site, name, cert_dn,
                          hidden="site_key", reissue=reissue)


@rpc_method(ADMIN, errors=ERRORS)
async def rotate_site_key(ctx: Context, site: str) -> dict[str, Any]:
    """Give a site (by id or name) a new key, returned once as ``site_key``; the old one
    stops working."""
    return await _audited(ctx, "rotate_site_key", site, {}, _rotate_site_key, site)


def _rotate_site_key(s: Session, site: str) -> dict[str, Any]:
    return users.rotate_site_key(s, reads.site_id_for(s, site))


@rpc_method(ADMIN, errors=ERRORS)
async def set_site_cert_dn(ctx: Context, site: str, cert_dn: str | None) -> dict[str, Any]:
    """Set (or with null, remove) the client-certificate subject DN a site (by id or name)
    may log in with."""
    return await _audited(ctx, "set_site_cert_dn", site, {"cert_dn": cert_dn},
                          _set_site_cert_dn, site, cert_dn)


def _set_site_cert_dn(s: Session, site: str, cert_dn: str | None) -> dict[str, Any]:
    return users.set_site_cert_dn(s, reads.site_id_for(s, site), cert_dn)


@rpc_method(ADMIN, errors=READ_ERRORS)
async def list_sites(ctx: Context) -> list[dict[str, Any]]:
    """Every site: site_id, name, cert_dn, created."""
    return await ctx.services.db.read(users.list_sites)


# --- audit ------------------------------------------------------------------------------

@rpc_method(ADMIN, errors=(INVALID_PARAMS, *READ_ERRORS))
async def list_audit_log(ctx: Context, limit: int = 100, before: int | None = None,
                         actor: str | None = None) -> dict[str, Any]:
    """Audit log entries, newest first: ``{items: [{audit_id, created, actor, method,
    target, params, rows}], next}``; pass ``next`` as ``before`` for older ones."""
    return await ctx.services.db.read(audit.list_entries, limit, before, actor)
