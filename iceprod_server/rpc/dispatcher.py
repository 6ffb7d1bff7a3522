"""The JSON-RPC 2.0 dispatcher behind ``POST /jsonrpc``.

The body first: JSON that does not parse, or nests deeper than
:data:`~iceprod_server.rpc.values.MAX_DEPTH`, is -32700; an empty batch, or one longer
than ``max_batch_length``, is one -32600. A batch runs :data:`BATCH_SLICE` calls at a time
and lets other callers in between.

Order of checks for each request object: its shape (-32600), the caller's credentials
(-32001, whatever the method), the method (-32601; for an IceProd 2.3.2 method not served
here, naming what replaces it), a param of an IceProd 2.3.2 form this server refuses
(-32602), the caller's role (-32001 anonymous, -32002 otherwise), the params (-32602,
an ``args`` list bound in IceProd 2.3.2's order); then the method runs, and domain errors
become their codes while anything unexpected is -32603 with the traceback in the log
only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from iceprod_server import errors, log_format, metrics
from iceprod_server.caller import Caller
from iceprod_server.errors import IceProdError
from iceprod_server.rpc import jsonclass, values
from iceprod_server.rpc.context import Context
from iceprod_server.rpc.registry import NOT_SERVED, REGISTRY, bind, check_refused_form

log = logging.getLogger(__name__)

# (legacy passkey param, legacy site_id param) -> Caller
Authenticate = Callable[[str | None, str | None], Awaitable[Caller]]
_MISSING = object()
# a batch runs this many calls at a time, and lets other callers in between
BATCH_SLICE = 50


def error_object(code: int, message: str | None = None,
                 data: dict[str, Any] | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message or errors.MESSAGES[code]}
    if data:
        err["data"] = data
    return err


def _response(req_id: Any, result: Any = _MISSING,
              error: dict[str, Any] | None = None) -> dict[str, Any]:
    if error is not None:
        return {"jsonrpc": "2.0", "error": error, "id": req_id}
    return {"jsonrpc": "2.0", "result": result, "id": req_id}


class Dispatcher:
    def __init__(self, services: Any) -> None:
        self.services = services

    async def handle_body(self, body: bytes, authenticate: Authenticate,
                          remote_ip: str = "", called: list[str] | None = None) -> str | None:
        """Answer one HTTP body; None means no response body (only notifications). The
        names of the methods called are added to ``called`` (for the access log)."""
        try:
            text = body.decode("utf-8")
            payload = jsonclass.loads(text)
        except (UnicodeDecodeError, ValueError) as e:
            return _error_text(errors.PARSE_ERROR, f"invalid JSON: {e}")
        except RecursionError:
            return _error_text(errors.PARSE_ERROR, "invalid JSON: nested too deep")
        limit = self.services.config.max_batch_length
        if isinstance(payload, list):
            if not payload:
                return _error_text(errors.INVALID_REQUEST, "empty batch")
            if len(payload) > limit:
                return _error_text(errors.INVALID_REQUEST,
                                   f"a batch holds at most {limit} calls, got {len(payload)}")
        if values.too_deep(payload):
            return _error_text(errors.PARSE_ERROR, "arrays and objects nested deeper than "
                               f"{values.MAX_DEPTH} levels")
        if not isinstance(payload, list):
            return await self.handle_one(payload, authenticate, remote_ip, called)
        answers: list[str] = []
        for start in range(0, len(payload), BATCH_SLICE):
            if start:
                # let other callers in between slices of a long batch
                await asyncio.sleep(0)
            results = await asyncio.gather(
                *(self.handle_one(r, authenticate, remote_ip, called)
                  for r in payload[start:start + BATCH_SLICE]))
            answers.extend(r for r in results if r is not None)
        return "[" + ",".join(answers) + "]" if answers else None

    async def handle_one(self, req: Any, authenticate: Authenticate, remote_ip: str,
                         called: list[str] | None = None) -> str | None:
        """The encoded response to one request object (None for a notification)."""
        req_id = req.get("id") if isinstance(req, dict) else None
        if not _valid_id(req_id):
            req_id = None
        problem = _shape_problem(req)
        if problem:
            return jsonclass.dumps(_response(req_id, error=error_object(
                errors.INVALID_REQUEST, data={"reason": problem})))
        notification = "id" not in req
        name = req["method"]
        params = req.get("params", [])
        started = time.monotonic()
        caller: Caller | None = None
        try:
            passkey = site_id = None
            iceprod2 = False
            if isinstance(params, dict):
                iceprod2 = "passkey" in params or "args" in params
                params = dict(params)
                passkey = params.pop("passkey", None)
                # site_id is a credential, except for methods that take it as a parameter
                method = REGISTRY.get(name)
                if method is None or "site_id" not in method.param_names:
                    site_id = params.pop("site_id", None)
                if passkey is not None and not (isinstance(passkey, str)
                                                and values.utf8_ok(passkey)):
                    raise errors.NotAuthenticated("passkey must be a string")
                if site_id is not None and not (isinstance(site_id, str)
                                                and values.utf8_ok(site_id)):
                    raise errors.NotAuthenticated("site_id must be a string")
            caller = await authenticate(passkey, site_id)
            result = await self.call(name, params, caller, remote_ip, iceprod2)
        except IceProdError as e:
            outcome = e.code
            response = _response(req_id, error=error_object(e.code, None, _data(e)))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("internal error in %s", name)
            outcome = errors.INTERNAL_ERROR
            response = _response(req_id, error=_internal_error())
        else:
            outcome = 0
            response = _response(req_id, result)
        seconds = time.monotonic() - started
        # only registered names become labels: a caller cannot make up new time series
        label = name if name in REGISTRY else "(unknown)"
        metrics.observe_rpc(label, outcome, seconds)
        if called is not None:
            called.append(label)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("rpc %s role=%s outcome=%s %.1fms", name,
                      caller.role if caller else "?", outcome, seconds * 1000)
        if notification:
            return None
        try:
            return jsonclass.dumps(response)
        except (TypeError, ValueError, RecursionError):
            log.exception("cannot encode the result of %s", name)
            return jsonclass.dumps(_response(req_id, error=_internal_error()))

    async def call(self, name: str, params: list[Any] | dict[str, Any], caller: Caller,
                   remote_ip: str = "", iceprod2: bool = False) -> Any:
        method = REGISTRY.get(name)
        if method is None:
            if name in NOT_SERVED:
                raise errors.MethodNotFound(NOT_SERVED[name][1], {"method": name})
            raise errors.MethodNotFound(f"no method {name!r}", {"method": name})
        # IceProd 2.3.2's SQL-text forms are refused before the role: what replaces them
        # is the answer whoever asks
        check_refused_form(name, params)
        public_read = self.services.config.public_read
        if not method.allows(caller.role, public_read):
            if caller.role is None:
                raise errors.NotAuthenticated(f"{name} needs a passkey or a login")
            raise errors.Forbidden(f"role {caller.role} may not call {name}",
                                   {"role": caller.role})
        kwargs = bind(method, params)
        ctx = Context(caller=caller, services=self.services, remote_ip=remote_ip,
                      iceprod2=iceprod2)
        return await method.func(ctx, **kwargs)


def _data(e: IceProdError) -> dict[str, Any]:
    """An error's ``data``; for the database's -32005 and -32006, with the request's id:
    the server's log has what the driver said under that id (never the answer: it names
    hosts, ports and users)."""
    if e.code in (errors.UNAVAILABLE, errors.OUTCOME_UNKNOWN):
        request_id = log_format.REQUEST_ID.get()
        if request_id:
            return {**e.data, "request_id": request_id}
    return e.data


def _internal_error() -> dict[str, Any]:
    """-32603, with the request's id: the log has the traceback under that id."""
    request_id = log_format.REQUEST_ID.get()
    return error_object(errors.INTERNAL_ERROR,
                        data={"request_id": request_id} if request_id else None)


def _error_text(code: int, reason: str) -> str:
    return jsonclass.dumps(_response(None, error=error_object(code, data={"reason": reason})))


def _valid_id(req_id: Any) -> bool:
    """A string, or a number that JSON can carry back (finite; integers within 64 bits)."""
    if type(req_id) is int:  # the usual case, without the general checks
        return values.INT_MIN <= req_id <= values.INT_MAX
    if isinstance(req_id, bool) or not isinstance(req_id, str | int | float):
        return False
    return not values.problems(req_id, "id")


_MEMBERS = frozenset(("jsonrpc", "method", "params", "id"))


def _shape_problem(req: Any) -> str:
    if not isinstance(req, dict):
        return "a request must be a JSON object"
    if req.get("jsonrpc") != "2.0":
        return 'member "jsonrpc" must be exactly "2.0"'
    if not isinstance(req.get("method"), str):
        return 'member "method" must be a string'
    if "params" in req and not isinstance(req["params"], list | dict):
        return 'member "params" must be an array or an object'
    if "id" in req and req["id"] is not None and not _valid_id(req["id"]):
        return 'member "id" must be a string, a number or null'
    if not _MEMBERS.issuperset(req):
        extra = set(req) - _MEMBERS
        return f"unknown members: {', '.join(sorted(extra))}"
    return ""
