"""The base handler: credentials, error pages, and the services every handler reaches."""

from __future__ import annotations

import json
import logging
from typing import Any

import tornado.web

from iceprod_server.rpc.context import Caller
from iceprod_server.services import Services

log = logging.getLogger(__name__)


class BaseHandler(tornado.web.RequestHandler):
    @property
    def services(self) -> Services:
        services: Services = self.settings["services"]
        return services

    def bearer_token(self) -> str | None:
        header = self.request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None

    def remote_ip(self) -> str:
        trusted = self.services.config.trusted_proxy
        if trusted and self.request.remote_ip == trusted:
            return self.request.headers.get("X-Real-IP", self.request.remote_ip or "")
        return self.request.remote_ip or ""

    async def caller_from_request(self, legacy_passkey: str | None = None,
                                  legacy_site_id: str | None = None) -> Caller:
        """Authenticate the request: Bearer header first, then the legacy params."""
        auth = self.services.auth
        token = self.bearer_token() or legacy_passkey
        pilot_ref = self.request.headers.get("X-IceProd-Pilot", "")
        if legacy_site_id is not None:
            cert_dn = None
            trusted = self.services.config.trusted_proxy
            if trusted and self.request.remote_ip == trusted:
                cert_dn = self.request.headers.get("X-SSL-Client-DN")
            return await auth.from_site(legacy_site_id, token, cert_dn)
        return await auth.from_passkey(token, pilot_ref)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status_code, "error": self._reason}))
