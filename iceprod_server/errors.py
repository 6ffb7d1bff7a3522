"""Domain errors. Each carries the JSON-RPC error code it is reported with.

Database functions and RPC methods raise these; the dispatcher turns them into JSON-RPC
error objects, with ``data`` saying what was wrong.
"""

from __future__ import annotations

from typing import Any

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
NOT_AUTHENTICATED = -32001
FORBIDDEN = -32002
NOT_FOUND = -32003
CONFLICT = -32004
UNAVAILABLE = -32005
OUTCOME_UNKNOWN = -32006

MESSAGES = {
    PARSE_ERROR: "Parse error",
    INVALID_REQUEST: "Invalid Request",
    METHOD_NOT_FOUND: "Method not found",
    INVALID_PARAMS: "Invalid params",
    INTERNAL_ERROR: "Internal error",
    NOT_AUTHENTICATED: "Not authenticated",
    FORBIDDEN: "Forbidden",
    NOT_FOUND: "Not found",
    CONFLICT: "Conflict",
    UNAVAILABLE: "Unavailable",
    OUTCOME_UNKNOWN: "Outcome unknown",
}


class IceProdError(Exception):
    code = INTERNAL_ERROR

    def __init__(self, reason: str = "", data: dict[str, Any] | None = None) -> None:
        super().__init__(reason or MESSAGES[self.code])
        self.reason = reason or MESSAGES[self.code]
        self.data: dict[str, Any] = {"reason": self.reason}
        if data:
            self.data.update(data)


class MethodNotFound(IceProdError):
    code = METHOD_NOT_FOUND


class InvalidParams(IceProdError):
    code = INVALID_PARAMS


class NotAuthenticated(IceProdError):
    code = NOT_AUTHENTICATED


class Forbidden(IceProdError):
    code = FORBIDDEN


class NotFound(IceProdError):
    code = NOT_FOUND


class Conflict(IceProdError):
    """The state change is not allowed from the current state, or the attempt is stale."""

    code = CONFLICT


class Unavailable(IceProdError):
    """Nothing of the call was committed, nor will be (the database is down, busy or did
    not answer before the unit reached its commit): the caller may simply call again.

    ``detail`` is what the driver said; it goes to the server's log and to the local
    commands' messages, never into an answer (it names hosts, ports and users)."""

    code = UNAVAILABLE
    detail = ""


class OutcomeUnknown(IceProdError):
    """The unit was committing when its caller's time ran out, or the connection was lost
    during its COMMIT: it may or may not have taken effect, and the server cannot tell.
    A call is repeated safely only with the same ``request_key``, or if repeating it
    changes nothing once it took effect."""

    code = OUTCOME_UNKNOWN
    detail = ""
