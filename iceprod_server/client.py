"""A JSON-RPC client for the IceProd server, built on jsonrpclib-pelix.

It adds what jsonrpclib leaves to the caller: the passkey header, a timeout on every
request, retries with exponential backoff, and one typed exception, :class:`RPCError`, that
keeps the server's ``data``. What is retried follows what the answer says happened:

- -32005 (unavailable: nothing was changed): always;
- -32006 (outcome unknown) and a connection lost after the request was sent: only a call
  that is safe to repeat: one that carries a ``request_key`` (the client gives every
  call of :data:`KEYED` a new one, kept for its repeats, unless the caller set it), or a
  pilot call whose repeat changes nothing once it took effect (:data:`REPEAT_SAFE`).
  Anything else is raised to the caller, who must find out what happened;
- any other error: never, so a call that was refused is never repeated.

One :class:`IceProdClient` may be shared by several threads: each thread gets its own
jsonrpclib proxy and HTTP connection, since a jsonrpclib transport holds per-request state.

    client = IceProdClient("http://127.0.0.1:8080", passkey=KEY)
    client.echo("hello")
    client.call("new_task", gridspec="", hostname="node1", ...)

With ``iceprod2=True`` it speaks as IceProd 2.3.2's client library did: the passkey among
the params, positional arguments as a list under ``args`` next to the named ones, and the
server answers in 2.3.2's shapes. :class:`JSONRPC` is that client made the way 2.3.2's
``iceprod.core.jsonRPCclient.JSONRPC`` was, so a script written for IceProd 2 moves here by
changing its import:

    from iceprod_server.client import JSONRPC
    rpc = JSONRPC("https://iceprod.example/jsonrpc", passkey=KEY)
    dataset_id = rpc.submit_dataset(config, njobs=10, description="...")
    rpc.public_get_number_of_tasks_in_each_state(dataset_id)
"""

from __future__ import annotations

import http.client
import itertools
import json
import logging
import random
import socket
import threading
import time
import uuid
import xmlrpc.client
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jsonrpclib.config
import jsonrpclib.jsonrpc
from jsonrpclib.jsonrpc import ProtocolError, ServerProxy, TransportError

from iceprod_server.rpc import jsonclass

log = logging.getLogger(__name__)

UNAVAILABLE = -32005
OUTCOME_UNKNOWN = -32006
# calls that take a request_key: a repeat with the same key answers the first result
KEYED = frozenset({"submit_dataset", "new_task", "create_user", "issue_passkey",
                   "create_group", "register_site"})
# pilot calls that, repeated after they took effect, change nothing and answer the same
REPEAT_SAFE = frozenset({"stillrunning", "set_processing", "finish_task", "task_error",
                         "update_pilot"})
# HTTP answers from a front end (nginx) that mean "the server is not there right now"
_RETRY_HTTP = {502, 503, 504}
# codes the client itself reports when no JSON-RPC answer arrived
CONNECTION_ERROR = -32098
TRANSPORT_ERROR = -32099

# jsonrpclib's own __jsonclass__ handling would try to import classes by name; the server
# speaks the IceProd convention, which :mod:`iceprod_server.rpc.jsonclass` decodes
_CONFIG = jsonrpclib.config.Config(version=2.0, content_type="application/json",
                                   use_jsonclass=False, user_agent="iceprod-client")


class RPCError(Exception):
    """A JSON-RPC error from the server, or a transport failure (codes -32098/-32099)."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data

    @property
    def reason(self) -> str:
        """The most specific explanation the server gave."""
        if isinstance(self.data, dict) and self.data.get("reason"):
            return str(self.data["reason"])
        return self.message

    def __str__(self) -> str:
        text = f"error {self.code}: {self.message}"
        if self.reason != self.message:
            text += f": {self.reason}"
        return text


def jsonrpc_url(url: str) -> str:
    """``http://host:port`` -> ``http://host:port/jsonrpc``; a URL already ending in
    ``/jsonrpc`` is used as it is."""
    url = url.strip()
    if "://" not in url:
        raise ValueError(f"not a URL: {url!r} (expected http://HOST:PORT)")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"unsupported URL scheme {parts.scheme!r} in {url!r}")
    if not parts.netloc:
        raise ValueError(f"no host in URL {url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/jsonrpc"):
        path += "/jsonrpc"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


class _TimeoutMixin:
    """Gives each HTTP connection jsonrpclib opens a socket timeout."""

    timeout: float = 60.0
    _connection: Any
    _extra_headers: Any

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        if self._connection and host == self._connection[0]:
            conn: http.client.HTTPConnection = self._connection[1]
            return conn
        chost, self._extra_headers, _x509 = self.get_host_info(host)  # type: ignore[attr-defined]
        conn = self._new_connection(chost)
        self._connection = host, conn
        return conn

    def _new_connection(self, chost: str) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(chost, timeout=self.timeout)


class _Transport(_TimeoutMixin, jsonrpclib.jsonrpc.Transport):
    def __init__(self, timeout: float) -> None:
        super().__init__(_CONFIG)
        self.timeout = timeout


class _SafeTransport(_TimeoutMixin, jsonrpclib.jsonrpc.SafeTransport):
    def __init__(self, timeout: float) -> None:
        super().__init__(_CONFIG, None)
        self.timeout = timeout

    def _new_connection(self, chost: str) -> http.client.HTTPConnection:
        return http.client.HTTPSConnection(chost, timeout=self.timeout, context=self.context)


def _decode(value: Any) -> Any:
    """Turn ``{"__jsonclass__": ...}`` values in a result into Python values."""
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        if "__jsonclass__" in value:
            return jsonclass.loads(json.dumps(value))
        return {k: _decode(v) for k, v in value.items()}
    return value


class IceProdClient:
    """Calls JSON-RPC methods on an IceProd server.

    ``url`` is the server's base URL (``http://host:port``) or its ``/jsonrpc`` URL.
    ``pilot_ref`` is sent as ``X-IceProd-Pilot`` so that pilots sharing one passkey are
    told apart. ``retries`` counts the extra attempts after the first. With
    ``retry_sent=False`` a connection error of a call that is not safe to repeat is
    retried only when the request surely never reached the server (connection refused).
    """

    def __init__(self, url: str, passkey: str | None = None, timeout: float = 60.0,
                 retries: int = 5, pilot_ref: str | None = None,
                 backoff: float = 0.5, max_backoff: float = 30.0,
                 retry_sent: bool = True, iceprod2: bool = False) -> None:
        self.url = jsonrpc_url(url)
        self.iceprod2 = iceprod2
        self._passkey = passkey
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.retry_sent = retry_sent
        self._headers: dict[str, str] = {}
        if passkey and not iceprod2:
            self._headers["Authorization"] = f"Bearer {passkey}"
        if pilot_ref:
            self._headers["X-IceProd-Pilot"] = pilot_ref
        self._local = threading.local()
        self._ids = itertools.count(1)
        self._ids_lock = threading.Lock()

    def _proxy(self) -> ServerProxy:
        proxy: ServerProxy | None = getattr(self._local, "proxy", None)
        if proxy is None:
            https = self.url.startswith("https:")
            transport = _SafeTransport(self.timeout) if https else _Transport(self.timeout)
            proxy = ServerProxy(self.url, transport=transport, headers=self._headers,
                                config=_CONFIG)
            self._local.proxy = proxy
        return proxy

    def _drop_proxy(self) -> None:
        proxy = getattr(self._local, "proxy", None)
        if proxy is not None:
            proxy("close")()
            self._local.proxy = None

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        self._drop_proxy()

    def _next_id(self) -> int:
        with self._ids_lock:
            return next(self._ids)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` with positional or named params (not both) and return its result.

        Raises :class:`RPCError`. An ``iceprod2`` client takes both, as IceProd 2.3.2's
        library did.
        """
        params: Any
        if self.iceprod2:
            params = {"passkey": self._passkey, **kwargs}
            if args:
                params["args"] = list(args)
        elif args and kwargs:
            raise ValueError("JSON-RPC takes positional or named params, not both")
        else:
            params = list(args) if args else dict(kwargs)
        if method in KEYED and isinstance(params, dict) and params.get("request_key") is None:
            # one key for the call and all its repeats: the server runs it at most once
            params["request_key"] = uuid.uuid4().hex
        safe = method in REPEAT_SAFE or (isinstance(params, dict)
                                         and params.get("request_key") is not None)
        attempt = 0
        while True:
            try:
                return self._call_once(method, params)
            except RPCError as e:
                retryable = self._retryable(e, safe)
                if not retryable or attempt >= self.retries:
                    raise
                delay = min(self.max_backoff, self.backoff * 2 ** attempt)
                delay *= 0.5 + random.random()  # spread out clients that failed together
                log.warning("%s: %s; retrying in %.1f s", method, e, delay)
                attempt += 1
                time.sleep(delay)

    def _retryable(self, e: RPCError, safe: bool) -> bool:
        """``safe``: the call may run twice without harm (a request key, or a repeat-safe
        pilot call)."""
        data = e.data if isinstance(e.data, dict) else {}
        if e.code == UNAVAILABLE:
            return True  # nothing was changed
        if e.code == OUTCOME_UNKNOWN:
            return safe  # it may have taken effect
        if e.code == CONNECTION_ERROR:
            return safe or self.retry_sent or not data.get("sent", True)
        if e.code == TRANSPORT_ERROR and data.get("http_status") in _RETRY_HTTP:
            return safe or self.retry_sent
        return False

    def _call_once(self, method: str, params: Any) -> Any:
        proxy = self._proxy()
        request = jsonclass.dumps({"jsonrpc": "2.0", "method": method, "params": params,
                                   "id": self._next_id()})
        try:
            response = proxy._run_request(request)
        except TransportError as e:
            self._drop_proxy()
            raise RPCError(TRANSPORT_ERROR, f"HTTP {e.errcode} {e.errmsg} from {self.url}",
                           {"http_status": e.errcode}) from e
        except ProtocolError as e:
            self._drop_proxy()
            raise RPCError(TRANSPORT_ERROR, f"bad answer from {self.url}: {e}") from e
        except (OSError, http.client.HTTPException, xmlrpc.client.ProtocolError) as e:
            self._drop_proxy()
            sent = not isinstance(e, ConnectionRefusedError | socket.gaierror)
            raise RPCError(CONNECTION_ERROR, f"cannot reach {self.url}: "
                           f"{e or type(e).__name__}", {"sent": sent}) from e
        except ValueError as e:  # the body was not JSON (not an IceProd server?)
            self._drop_proxy()
            raise RPCError(TRANSPORT_ERROR, f"bad answer from {self.url}: {e}") from e
        if response is None:
            return None
        if not isinstance(response, dict):
            raise RPCError(TRANSPORT_ERROR, f"bad answer from {self.url}: not an object")
        error = response.get("error")
        if error:
            if isinstance(error, dict):
                raise RPCError(int(error.get("code", -32603)), str(error.get("message", "")),
                               error.get("data"))
            raise RPCError(-32603, str(error))
        return _decode(response.get("result"))

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Method(self, name)


class _Method:
    """``client.echo("x")`` and ``client.rpc.discover()``."""

    def __init__(self, client: IceProdClient, name: str) -> None:
        self._client = client
        self._name = name

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Method(self._client, f"{self._name}.{name}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._client.call(self._name, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<JSON-RPC method {self._name}>"


class JSONRPC(IceProdClient):
    """An :class:`IceProdClient` made as IceProd 2.3.2's ``JSONRPC(address, timeout=None,
    passkey=None)``: it speaks the 2.3.2 way (``iceprod2=True``) and opens with the same
    check, ``echo`` of ``"e"``, raising :class:`RPCError` if the server does not answer
    it. Errors are :class:`RPCError`, an ``Exception`` as 2.3.2's were."""

    def __init__(self, address: str, timeout: float | None = None,
                 passkey: str | None = None, retries: int = 5) -> None:
        super().__init__(address, passkey=passkey, timeout=timeout or 60.0,
                         retries=retries, iceprod2=True)
        answer = self.call("echo", value="e")
        if answer != "e":
            raise RPCError(TRANSPORT_ERROR, f"{self.url} did not echo: {answer!r}")
