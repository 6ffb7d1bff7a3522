"""An asyncio load generator for JSON-RPC: many concurrent callers on keep-alive connections.

Each caller owns one HTTP/1.1 connection and sends one request at a time, as a pilot does
with jsonrpclib (which keeps its connection open). The HTTP client is deliberately minimal
(a request head prepared once, ``Content-Length`` bodies only) so that the load generator,
which shares the machine's two cores with the server, costs as little as possible;
Tornado's own ``AsyncHTTPClient`` opens a new connection per request, which would make
every call pay a TCP handshake that neither real pilots nor ``wrk`` pay.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


class RPCFailure(Exception):
    """The server answered with a JSON-RPC error, or not with HTTP 200."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Connection:
    """One keep-alive HTTP/1.1 connection to ``POST /jsonrpc`` (``https://`` URLs over
    TLS)."""

    def __init__(self, base_url: str, passkey: str | None = None,
                 pilot_ref: str | None = None, path: str = "/jsonrpc",
                 context: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        https = parts.scheme == "https"
        self.port = parts.port or (443 if https else 80)
        # https: TLS with ``context`` (which names the authorities to trust)
        self.context = (context or ssl.create_default_context()) if https else None
        lines = [f"POST {path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                 "Content-Type: application/json"]
        if passkey:
            lines.append(f"Authorization: Bearer {passkey}")
        if pilot_ref:
            lines.append(f"X-IceProd-Pilot: {pilot_ref}")
        self._head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ids = itertools.count(1)

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(
                self.host, self.port, ssl=self.context)
        return self._reader, self._writer

    async def post(self, body: bytes) -> bytes:
        reader, writer = await self._open()
        writer.write(self._head + str(len(body)).encode() + b"\r\n\r\n" + body)
        status_line = await reader.readline()
        if not status_line:
            await self.close()
            raise ConnectionError("server closed the connection")
        status = int(status_line.split(b" ", 2)[1])
        length = 0
        keep_alive = True
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                keep_alive = False
        data = await reader.readexactly(length) if length else b""
        if not keep_alive:
            await self.close()
        if status != 200:
            raise RPCFailure(-status, f"HTTP {status}: {data[:200]!r}")
        return data

    async def call(self, method: str, params: dict[str, Any] | list[Any]) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params,
                           "id": next(self._ids)}).encode()
        answer = json.loads(await self.post(body))
        if "error" in answer:
            err = answer["error"]
            raise RPCFailure(int(err.get("code", 0)), str(err.get("message", "")))
        return answer["result"]

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass


@dataclass
class Timings:
    """Latencies (seconds) per method, and the errors seen, of one measured run."""

    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    def add(self, method: str, seconds: float) -> None:
        self.latencies.setdefault(method, []).append(seconds)

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


async def timed(timings: Timings | None, conn: Connection, method: str,
                params: dict[str, Any] | list[Any]) -> Any:
    """Call ``method`` and record its latency (when ``timings`` is given)."""
    start = time.perf_counter()
    try:
        result = await conn.call(method, params)
    except RPCFailure as e:
        if timings is not None:
            timings.error(f"{method} {e.code}")
        raise
    if timings is not None:
        timings.add(method, time.perf_counter() - start)
    return result


async def close_all(conns: list[Connection]) -> None:
    await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)


async def hammer(conns: list[Connection], duration: float,
                 call: Callable[[Connection, Timings], Awaitable[None]],
                 warmup: float = 1.0) -> tuple[Timings, float]:
    """Every connection calls ``call`` in a loop for ``warmup + duration`` seconds; the
    calls that start after the warm-up are measured. Returns the timings and the measured
    window's length."""
    timings = Timings()
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + duration
    last_end = measure_from

    async def loop(conn: Connection) -> None:
        nonlocal last_end
        while True:
            now = time.perf_counter()
            if now >= stop_at:
                return
            measured = now >= measure_from
            await call(conn, timings if measured else Timings())
            if measured:
                last_end = max(last_end, time.perf_counter())

    await asyncio.gather(*(loop(c) for c in conns))
    return timings, last_end - measure_from
