"""Who is calling: the identity a request's credentials resolve to.

It sits low in the layers (nothing here imports the services) so that authentication,
file access rules and the handlers can all name a caller without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    role: str | None = None  # None: anonymous
    key_id: str | None = None
    user_id: str | None = None
    username: str | None = None
    site_id: str | None = None
    # sent by a pilot in X-IceProd-Pilot: tells apart pilots that share one passkey
    pilot_ref: str = ""
    # when the passkey that authenticated the caller expires (epoch seconds)
    expires: float | None = None
    # the passkey's own task lease in seconds (None: the server's lease_seconds)
    lease_seconds: float | None = None

    @property
    def claimant(self) -> str:
        """The identity recorded on a claimed task; later calls about it must match."""
        base = self.key_id or self.user_id or self.site_id or "anonymous"
        return f"{base}:{self.pilot_ref}" if self.pilot_ref else base

    @property
    def actor(self) -> str:
        """How the audit log names this caller."""
        if self.username:
            return self.username
        if self.site_id:
            return f"site:{self.site_id}"
        if self.key_id:
            return f"key:{self.key_id}"
        return "anonymous"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


ANONYMOUS = Caller()
