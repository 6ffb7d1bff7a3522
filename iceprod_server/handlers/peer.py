"""Who sent a request: its credentials and its address, read from the request's head.

Shared by the handlers (through :class:`~iceprod_server.handlers.base.BaseHandler`) and by
the JSON-RPC fast path, which answers pilots' calls without a ``RequestHandler``.
"""

from __future__ import annotations

from typing import Any

from tornado.httputil import HTTPHeaders

from iceprod_server.auth import Authenticator
from iceprod_server.caller import Caller
from iceprod_server.config import Config
from iceprod_server.errors import NotAuthenticated

# the Authorization schemes the server accepts
AUTH_SCHEMES = ("Bearer",)


def peer_address(connection: Any, fallback: str = "") -> str:
    """The address of the TCP peer itself, which a client cannot forge (unlike X-Real-IP,
    which only the trusted proxy may set)."""
    context = getattr(connection, "context", None)
    address = getattr(context, "address", None)
    if isinstance(address, tuple) and address:
        return str(address[0])
    return fallback


class Peer:
    """The sender of one request, as its headers and its TCP peer say."""

    __slots__ = ("headers", "address", "protocol", "config")

    def __init__(self, headers: HTTPHeaders, address: str, protocol: str,
                 config: Config) -> None:
        self.headers = headers
        self.address = address
        self.protocol = protocol
        self.config = config

    def bearer_token(self) -> str | None:
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None

    def refuse_other_schemes(self) -> None:
        """An ``Authorization`` header that is not ``Bearer <passkey>`` is an error, not
        an anonymous call: the caller meant to authenticate and would otherwise not know
        why they are treated as anonymous."""
        header = self.headers.get("Authorization")
        if header is None or self.bearer_token() is not None:
            return
        scheme = header.partition(" ")[0]
        if scheme.lower() == "bearer":
            reason = "Authorization: Bearer without a passkey"
        else:
            reason = (f"Authorization scheme {scheme[:32]!r} is not accepted: send "
                      "'Authorization: Bearer <passkey>' (or log in)")
        raise NotAuthenticated(reason, {"schemes": list(AUTH_SCHEMES)})

    def from_trusted_proxy(self) -> bool:
        trusted = self.config.trusted_proxy
        return bool(trusted) and self.address == trusted

    def remote_ip(self) -> str:
        if self.from_trusted_proxy():
            return self.headers.get("X-Real-IP", self.address)
        return self.address

    def over_https(self) -> bool:
        """Whether the client reached us over HTTPS, directly or through the proxy."""
        if self.protocol == "https":
            return True
        return self.from_trusted_proxy() and self.headers.get(
            "X-Forwarded-Proto", self.headers.get("X-Scheme", "")).lower() == "https"

    async def caller(self, auth: Authenticator, legacy_passkey: str | None = None,
                     legacy_site_id: str | None = None,
                     session: Caller | None = None) -> Caller:
        """Authenticate: Bearer header first, then the legacy params, then the login
        session (``session``, whose XSRF token the handler has checked already)."""
        token = legacy_passkey
        if "Authorization" in self.headers:
            self.refuse_other_schemes()
            token = self.bearer_token() or legacy_passkey
        if legacy_site_id is not None:
            cert_dn = None
            if self.from_trusted_proxy():
                cert_dn = self.headers.get("X-SSL-Client-DN")
            return await auth.from_site(legacy_site_id, token, cert_dn)
        if token is None and session is not None and session.role is not None:
            return session
        if token is None and self.from_trusted_proxy():
            cert_dn = self.headers.get("X-SSL-Client-DN")
            site = await auth.from_site_dn(cert_dn) if cert_dn else None
            if site is not None:
                return site
        return await auth.from_passkey(token, self.headers.get("X-IceProd-Pilot", ""))
