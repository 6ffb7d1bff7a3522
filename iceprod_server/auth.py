"""Turns the credentials on a request into a :class:`Caller`.

Lookups are cached for ``auth_cache_seconds`` (a fraction of a second by default), so a key
revoked from the command line stops working on running servers almost at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

from iceprod_server.caller import ANONYMOUS, Caller
from iceprod_server.db import users
from iceprod_server.errors import NotAuthenticated
from iceprod_server.executors.database import Database


class Authenticator:
    def __init__(self, db: Database, cache_seconds: float) -> None:
        self.db = db
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Caller]] = {}
        self._pending: dict[str, asyncio.Future[Caller | None]] = {}

    async def from_passkey(self, token: str | None, pilot_ref: str = "") -> Caller:
        """The caller a passkey identifies; anonymous without one.

        Raises NotAuthenticated for an unknown, expired or revoked key.
        """
        if not token:
            return ANONYMOUS
        if not isinstance(token, str) or len(token) > 512:
            raise NotAuthenticated("invalid passkey")
        now = time.monotonic()
        hit = self._cache.get(token)
        if hit is not None and now - hit[0] < self.cache_seconds:
            caller = hit[1]
        else:
            # requests arriving together with the same key share one lookup
            pending = self._pending.get(token)
            if pending is None:
                pending = asyncio.ensure_future(self._lookup(token))
                self._pending[token] = pending
                pending.add_done_callback(lambda _f: self._pending.pop(token, None))
            found = await asyncio.shield(pending)
            if found is None:
                self._cache.pop(token, None)
                raise NotAuthenticated("invalid, expired or revoked passkey")
            caller = found
        if caller.expires is not None and caller.expires <= time.time():
            raise NotAuthenticated("passkey expired")
        if pilot_ref:
            caller = dataclasses.replace(caller, pilot_ref=pilot_ref[:64])
        return caller

    async def _lookup(self, token: str) -> Caller | None:
        started = time.monotonic()
        found = await self.db.read(users.lookup_passkey, token)
        if found is None:
            # a peer site sends its site key the same way
            site = await self.db.read(users.lookup_site_key, token)
            if site is None:
                return None
            caller = Caller(role="site", site_id=site["site_id"])
        else:
            caller = Caller(role=found["role"], key_id=found["key_id"],
                            user_id=found["user_id"], username=found["username"],
                            expires=found["expires"], lease_seconds=found["lease_seconds"])
        if len(self._cache) > 10000:
            self._cache.clear()
        self._cache[token] = (started, caller)
        return caller

    async def from_site(self, site_id: str, token: str | None,
                        cert_dn: str | None = None) -> Caller:
        found = await self.db.read(users.lookup_site, site_id, token, cert_dn)
        if found is None:
            raise NotAuthenticated("invalid site credentials")
        return Caller(role="site", site_id=found["site_id"], username=None)

    async def from_site_dn(self, cert_dn: str) -> Caller | None:
        """The site whose client certificate nginx verified (the DN it passed on), or None
        when no site is registered with it."""
        found = await self.db.read(users.lookup_site_dn, cert_dn)
        if found is None:
            return None
        return Caller(role="site", site_id=found["site_id"], username=None)

    async def from_session(self, token: str) -> Caller | None:
        """The caller a login cookie names, or None once the login ended (logout, expiry)
        or the user is gone or disabled.

        Looked up like a passkey (cached for a fraction of a second), so a logout or a
        disabled user takes effect on every server at once.
        """
        now = time.monotonic()
        cache_key = "session:" + token
        hit = self._cache.get(cache_key)
        if hit is not None and now - hit[0] < self.cache_seconds:
            return hit[1] if hit[1].role else None
        found = await self.db.read(users.session_user, token)
        caller = Caller(role=found["role"], user_id=found["user_id"],
                        username=found["username"]) if found else Caller()
        self._cache[cache_key] = (now, caller)
        return caller if caller.role else None

    def forget_session(self, token: str) -> None:
        self._cache.pop("session:" + token, None)
