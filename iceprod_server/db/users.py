"""Users, passkeys, groups and sites: the units of work behind authentication and admin."""

from __future__ import annotations

import hmac
import re
import time
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from iceprod_server.db.ids import new_id
from iceprod_server.db.models import ROLES, Group, LoginSession, Passkey, Site, User
from iceprod_server.db.util import changed
from iceprod_server.errors import Conflict, InvalidParams, NotFound
from iceprod_server.secrets_util import check_password, hash_password, hash_token, new_token

USERNAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")


def _user_dict(u: User) -> dict[str, Any]:
    return {"user_id": u.user_id, "username": u.username, "role": u.role,
            "disabled": u.disabled, "created": u.created}


def create_user(s: Session, username: str, password: str, role: str = "user") -> dict[str, Any]:
    if not USERNAME_RE.match(username):
        raise InvalidParams("username may use letters, digits and _ . @ - (at most 128)")
    if role not in ("user", "admin"):
        raise InvalidParams(f"role must be user or admin, got {role!r}")
    if len(password) < 8:
        raise InvalidParams("password must be at least 8 characters")
    if s.scalar(select(User.user_id).where(User.username == username)):
        raise Conflict(f"user {username!r} already exists")
    user = User(user_id=new_id(), username=username, password_hash=hash_password(password),
                role=role, disabled=False, created=time.time())
    s.add(user)
    s.flush()
    return _user_dict(user)


def list_users(s: Session) -> list[dict[str, Any]]:
    return [_user_dict(u) for u in s.scalars(select(User).order_by(User.username))]


def set_user(s: Session, username: str, role: str | None = None,
             disabled: bool | None = None, password: str | None = None) -> dict[str, Any]:
    user = s.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFound(f"no user {username!r}")
    if role is not None:
        if role not in ("user", "admin"):
            raise InvalidParams(f"role must be user or admin, got {role!r}")
        user.role = role
    if disabled is not None:
        user.disabled = disabled
    if password is not None:
        if len(password) < 8:
            raise InvalidParams("password must be at least 8 characters")
        user.password_hash = hash_password(password)
    s.flush()
    return _user_dict(user)


def verify_login(s: Session, username: str, password: str) -> dict[str, Any] | None:
    """The user, if ``password`` is right and the account is enabled."""
    user = s.scalar(select(User).where(User.username == username))
    if user is None:
        # spend the same time as a real check so that names cannot be probed
        check_password(password, hash_password("x" * 8))
        return None
    if not check_password(password, user.password_hash) or user.disabled:
        return None
    return _user_dict(user)


def create_session(s: Session, user_id: str, hours: float) -> str:
    """Start a login for ``user_id``; returns the token for the cookie (stored hashed)."""
    token = new_token()
    now = time.time()
    s.execute(delete(LoginSession).where(LoginSession.expires < now))
    s.add(LoginSession(session_hash=hash_token(token), user_id=user_id, created=now,
                       expires=now + hours * 3600.0))
    return token


def end_session(s: Session, token: str) -> int:
    return changed(s, delete(LoginSession).where(LoginSession.session_hash == hash_token(token)))


def session_user(s: Session, token: str) -> dict[str, Any] | None:
    """The user a login cookie's token names, if the login is current and the user is
    enabled."""
    row = s.execute(select(LoginSession, User).join(User, User.user_id == LoginSession.user_id)
                    .where(LoginSession.session_hash == hash_token(token))).first()
    if row is None:
        return None
    login, user = row
    if login.expires <= time.time() or user.disabled:
        return None
    return _user_dict(user)


def issue_passkey(s: Session, role: str, username: str | None = None,
                  expires_in: float | None = None, description: str = "",
                  lease_seconds: float | None = None) -> dict[str, Any]:
    """Make a passkey; the token itself is returned here once and never stored.

    ``lease_seconds`` is how long a task claimed with the key lives without a call about
    it (None: the server's ``lease_seconds``)."""
    if role not in ROLES:
        raise InvalidParams(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    user_id = None
    if username:
        user = s.scalar(select(User).where(User.username == username))
        if user is None:
            raise NotFound(f"no user {username!r}")
        if role == "admin" and user.role != "admin":
            raise InvalidParams(f"user {username!r} is not an admin")
        user_id = user.user_id
    elif role == "user":
        raise InvalidParams("a user passkey needs a user (it carries that user's rights)")
    if expires_in is not None and expires_in <= 0:
        raise InvalidParams("expiry must be a positive number of seconds")
    if lease_seconds is not None and lease_seconds <= 0:
        raise InvalidParams("lease must be a positive number of seconds")
    token = new_token()
    now = time.time()
    key = Passkey(key_id=new_id(), key_hash=hash_token(token), role=role, user_id=user_id,
                  description=description, created=now,
                  expires=now + expires_in if expires_in else None, revoked=False,
                  lease_seconds=lease_seconds)
    s.add(key)
    s.flush()
    return {"key_id": key.key_id, "passkey": token, "role": role, "username": username,
            "expires": key.expires, "lease_seconds": lease_seconds}


def new_passkey_secret(s: Session, key_id: str) -> str:
    """Give an existing passkey a new secret (the old one stops working); returns it."""
    token = new_token()
    rows = changed(s, update(Passkey).where(Passkey.key_id == key_id)
                   .values(key_hash=hash_token(token)))
    if rows == 0:
        raise NotFound(f"no passkey {key_id!r}")
    return token


def revoke_passkey(s: Session, key_id: str | None = None, token: str | None = None) -> int:
    """Revoke by id or by the key itself; returns how many keys were revoked (0 or 1)."""
    if not key_id and not token:
        raise InvalidParams("name a key by its id or by the key itself")
    stmt = update(Passkey).values(revoked=True)
    if key_id:
        stmt = stmt.where(Passkey.key_id == key_id)
    else:
        stmt = stmt.where(Passkey.key_hash == hash_token(token or ""))
    rows = changed(s, stmt)
    if rows == 0:
        raise NotFound("no such passkey")
    return int(rows)


def list_passkeys(s: Session) -> list[dict[str, Any]]:
    rows = s.execute(select(Passkey, User.username).outerjoin(User, Passkey.user_id ==
                                                               User.user_id)
                     .order_by(Passkey.created))
    now = time.time()
    return [{"key_id": k.key_id, "role": k.role, "username": name,
             "description": k.description, "created": k.created, "expires": k.expires,
             "revoked": k.revoked, "expired": bool(k.expires and k.expires <= now),
             "lease_seconds": k.lease_seconds}
            for k, name in rows]


def lookup_passkey(s: Session, token: str) -> dict[str, Any] | None:
    """The identity a passkey carries, or None if it is unknown, expired, revoked or its
    user is disabled."""
    digest = hash_token(token)
    row = s.execute(select(Passkey, User).outerjoin(User, Passkey.user_id == User.user_id)
                    .where(Passkey.key_hash == digest)).first()
    if row is None:
        return None
    key, user = row
    if not hmac.compare_digest(key.key_hash, digest) or key.revoked:
        return None
    if key.expires is not None and key.expires <= time.time():
        return None
    if user is not None and user.disabled:
        return None
    role = key.role
    if user is not None and role == "admin" and user.role != "admin":
        role = "user"
    return {"key_id": key.key_id, "role": role, "user_id": key.user_id,
            "username": user.username if user else None,
            "expires": key.expires, "lease_seconds": key.lease_seconds}


def create_group(s: Session, name: str, priority: float = 1.0,
                 description: str = "") -> dict[str, Any]:
    if not name or len(name) > 128:
        raise InvalidParams("group name must be 1 to 128 characters")
    if priority < 0:
        raise InvalidParams("group priority must not be negative")
    if s.scalar(select(Group.group_id).where(Group.name == name)):
        raise Conflict(f"group {name!r} already exists")
    g = Group(group_id=new_id(), name=name, priority=priority, description=description)
    s.add(g)
    s.flush()
    return {"group_id": g.group_id, "name": name, "priority": priority,
            "description": description}


def set_group_priority(s: Session, name: str, priority: float) -> dict[str, Any]:
    if priority < 0:
        raise InvalidParams("group priority must not be negative")
    g = s.scalar(select(Group).where(Group.name == name))
    if g is None:
        raise NotFound(f"no group {name!r}")
    g.priority = priority
    return {"group_id": g.group_id, "name": g.name, "priority": g.priority,
            "description": g.description}


def list_groups(s: Session) -> list[dict[str, Any]]:
    return [{"group_id": g.group_id, "name": g.name, "priority": g.priority,
             "description": g.description}
            for g in s.scalars(select(Group).order_by(Group.name))]


def register_site(s: Session, name: str, cert_dn: str | None = None) -> dict[str, Any]:
    """Register a peer site; its key is returned here once."""
    if not name or len(name) > 128:
        raise InvalidParams("site name must be 1 to 128 characters")
    if s.scalar(select(Site.site_id).where(Site.name == name)):
        raise Conflict(f"site {name!r} already exists")
    token = new_token()
    site = Site(site_id=new_id(), name=name, key_hash=hash_token(token), cert_dn=cert_dn,
                created=time.time())
    s.add(site)
    s.flush()
    return {"site_id": site.site_id, "name": name, "site_key": token, "cert_dn": cert_dn}


def rotate_site_key(s: Session, site_id: str) -> dict[str, Any]:
    site = s.get(Site, site_id)
    if site is None:
        raise NotFound(f"no site {site_id!r}")
    token = new_token()
    site.key_hash = hash_token(token)
    return {"site_id": site_id, "name": site.name, "site_key": token}


def set_site_cert_dn(s: Session, site_id: str, cert_dn: str | None) -> dict[str, Any]:
    site = s.get(Site, site_id)
    if site is None:
        raise NotFound(f"no site {site_id!r}")
    site.cert_dn = cert_dn
    return {"site_id": site_id, "name": site.name, "cert_dn": cert_dn}


def list_sites(s: Session) -> list[dict[str, Any]]:
    return [{"site_id": x.site_id, "name": x.name, "cert_dn": x.cert_dn, "created": x.created}
            for x in s.scalars(select(Site).order_by(Site.name))]


def lookup_site(s: Session, site_id: str, token: str | None,
                cert_dn: str | None) -> dict[str, Any] | None:
    site = s.get(Site, site_id)
    if site is None:
        return None
    if token is not None and site.key_hash and hmac.compare_digest(site.key_hash,
                                                                  hash_token(token)):
        return {"site_id": site.site_id, "name": site.name}
    if cert_dn is not None and site.cert_dn and hmac.compare_digest(site.cert_dn, cert_dn):
        return {"site_id": site.site_id, "name": site.name}
    return None


def lookup_site_key(s: Session, token: str) -> dict[str, Any] | None:
    """The site whose key ``token`` is (sites send it as ``Authorization: Bearer``)."""
    digest = hash_token(token)
    site = s.scalars(select(Site).where(Site.key_hash == digest)).first()
    if site is None or not site.key_hash or not hmac.compare_digest(site.key_hash, digest):
        return None
    return {"site_id": site.site_id, "name": site.name}


def lookup_site_dn(s: Session, cert_dn: str) -> dict[str, Any] | None:
    """The site registered with this client-certificate subject DN."""
    site = s.scalars(select(Site).where(Site.cert_dn == cert_dn)).first()
    if site is None or not site.cert_dn or not hmac.compare_digest(site.cert_dn, cert_dn):
        return None
    return {"site_id": site.site_id, "name": site.name}
