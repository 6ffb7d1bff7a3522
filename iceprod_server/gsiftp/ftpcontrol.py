"""An asyncio FTP control connection, and a pool of idle ones.

``globus-url-copy`` only transfers and lists names; the other operations (MKD, RMD, DELE,
RNFR/RNTO, SIZE, MLST, CKSM, and MLSD for listing details) are spoken here. The connection
raises plain :class:`ReplyError` / :class:`ConnectionClosed`; the client maps them to the
package's typed errors, since only it knows which URL an answer was about.

A :class:`Protection` (GSI, see :mod:`iceprod_server.gsiftp.gsi`) may wrap every command
after login and unwrap the server's 63x replies; without one the channel is clear text.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Protocol

log = logging.getLogger(__name__)

_LINE_LIMIT = 1 << 20  # a long MLST answer is one line; refuse absurd ones
_EPSV = re.compile(r"\(\|\|\|(\d+)\|\)")
_PASV = re.compile(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)")


@dataclasses.dataclass(frozen=True)
class Reply:
    """One server reply: its code and every line as sent (without CR LF)."""

    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def argument(self) -> str:
        """The text after the code on the last line, e.g. the number of ``213 1234``."""
        return self.lines[-1][4:].strip()


class ReplyError(Exception):
    """The server answered with a code the command does not accept."""

    def __init__(self, command: str, reply: Reply) -> None:
        super().__init__(f"{command.split(' ', 1)[0]}: {reply.text}")
        self.reply = reply


class ConnectionClosed(Exception):
    """The control or data connection ended before the answer was complete."""


class Protection(Protocol):
    """Integrity/privacy wrapping of the control channel (RFC 2228 ENC/MIC, 63x)."""

    def seal(self, line: bytes) -> bytes:
        """A clear command line (with CR LF) as the protected line to send."""

    def unseal(self, token: str) -> bytes:
        """The base64 text of a 63x reply line as the clear reply text it carries."""


class ControlConnection:
    """One logged-in FTP control connection. Commands are sent one at a time; the owner
    (a pool user) never shares it between tasks while a command is in flight."""

    def __init__(self, host: str, port: int, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.host = host
        self.port = port
        self._reader = reader
        self._writer = writer
        self._pending: list[str] = []  # clear reply lines unwrapped from one 63x token
        self.protection: Protection | None = None

    @classmethod
    async def connect(cls, host: str, port: int) -> ControlConnection:
        """Open the TCP connection and read the greeting."""
        reader, writer = await asyncio.open_connection(host, port, limit=_LINE_LIMIT)
        conn = cls(host, port, reader, writer)
        try:
            greeting = await conn.read_reply()
            while 100 <= greeting.code < 200:  # "120 ready in n minutes"
                greeting = await conn.read_reply()
            if greeting.code != 220:
                raise ReplyError("connect", greeting)
        except BaseException:
            conn.abort()
            raise
        return conn

    async def login(self, user: str, password: str) -> None:
        reply = await self.command(f"USER {user}")
        if reply.code == 331:
            reply = await self.command(f"PASS {password}")
        if reply.code not in (230, 232):
            raise ReplyError("USER", reply)
        # binary mode, so that SIZE counts bytes as transferred
        await self.expect("TYPE I")

    # -- commands ------------------------------------------------------------------------

    async def command(self, line: str) -> Reply:
        """Send one command and read its reply, whatever the code."""
        await self.send(line)
        return await self.read_reply()

    async def expect(self, line: str, *codes: int) -> Reply:
        """Send one command; raise :class:`ReplyError` unless the reply has one of
        ``codes`` (by default any 2xx)."""
        reply = await self.command(line)
        accepted = reply.code in codes if codes else 200 <= reply.code < 300
        if not accepted:
            raise ReplyError(line, reply)
        return reply

    async def send(self, line: str) -> None:
        if "\r" in line or "\n" in line:
            # a path with a line break would smuggle a second command
            raise ValueError(f"line break in FTP command {line!r}")
        log.debug("%s:%d > %s", self.host, self.port,
                  "PASS ****" if line.startswith("PASS ") else line)
        data = line.encode("utf-8", "surrogateescape") + b"\r\n"
        if self.protection is not None:
            data = self.protection.seal(data)
        try:
            self._writer.write(data)
            await self._writer.drain()
        except OSError as exc:
            raise ConnectionClosed(f"sending {line.split(' ', 1)[0]}: {exc}") from exc

    async def read_reply(self) -> Reply:
        """One complete (possibly multi-line) reply."""
        first = await self._read_line()
        if not re.match(r"\d{3}[ -]|\d{3}$", first):
            raise ConnectionClosed(f"not an FTP reply: {first!r}")
        lines = [first]
        if first[3:4] == "-":
            end = first[:3] + " "
            while True:
                line = await self._read_line()
                lines.append(line)
                if line.startswith(end) or line == first[:3]:
                    break
        reply = Reply(int(first[:3]), tuple(lines))
        log.debug("%s:%d < %s", self.host, self.port, reply.text)
        return reply

    async def _read_line(self) -> str:
        while not self._pending:
            try:
                raw = await self._reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                raise ConnectionClosed("the server closed the control connection") from exc
            except (OSError, asyncio.LimitOverrunError) as exc:
                raise ConnectionClosed(f"control connection: {exc}") from exc
            line = raw.decode("utf-8", "surrogateescape").rstrip("\r\n")
            if self.protection is not None and re.match(r"63[123][ -]", line):
                clear = self.protection.unseal(line[4:].strip())
                self._pending.extend(
                    clear.decode("utf-8", "surrogateescape").splitlines())
            else:
                return line
        return self._pending.pop(0)

    async def read_data(self, line: str) -> bytes:
        """Run a command whose answer comes over a passive data connection (MLSD)."""
        port = await self._passive_port()
        reader, writer = await asyncio.open_connection(self.host, port)
        try:
            reply = await self.command(line)
            if not 100 <= reply.code < 300:
                raise ReplyError(line, reply)
            try:
                data = await reader.read()
            except OSError as exc:
                raise ConnectionClosed(f"data connection: {exc}") from exc
            if reply.code < 200:
                reply = await self.read_reply()
            if not 200 <= reply.code < 300:
                raise ReplyError(line, reply)
            return data
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _passive_port(self) -> int:
        reply = await self.command("EPSV")
        match = _EPSV.search(reply.text) if reply.code == 229 else None
        if match:
            return int(match.group(1))
        # the address in a PASV answer is ignored: data goes to the host we talk to,
        # which also keeps a hostile server from pointing us elsewhere
        reply = await self.expect("PASV", 227)
        found = _PASV.search(reply.text)
        if not found:
            raise ReplyError("PASV", reply)
        return int(found.group(5)) * 256 + int(found.group(6))

    # -- ending --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._writer.is_closing() or self._reader.at_eof()

    async def quit(self) -> None:
        """Say goodbye and close; errors are of no interest any more."""
        with contextlib.suppress(ConnectionClosed, OSError, TimeoutError):
            if not self.closed:
                await asyncio.wait_for(self.command("QUIT"), 2.0)
        self.abort()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self._writer.wait_closed(), 2.0)

    def abort(self) -> None:
        """Close at once (timeouts, cancellation, a connection in an unknown state)."""
        self._writer.close()


Key = tuple[str, str, int, str]  # scheme, host, port, user


class ConnectionPool:
    """Idle logged-in connections per server, so that a burst of small commands does not
    pay a connect and login (and, for GSI, a TLS handshake) each time."""

    def __init__(self, max_idle: int = 4) -> None:
        self.max_idle = max_idle
        self._idle: dict[Key, list[ControlConnection]] = {}
        self._busy: set[ControlConnection] = set()
        self._closed = False

    async def acquire(self, key: Key, opener: Callable[[], Awaitable[ControlConnection]]
                      ) -> tuple[ControlConnection, bool]:
        """A connection for ``key`` and whether it was reused from the pool."""
        idle = self._idle.get(key, [])
        while idle:
            conn = idle.pop()
            if not conn.closed:
                self._busy.add(conn)
                return conn, True
            conn.abort()
        conn = await opener()
        if self._closed:
            conn.abort()
            raise ConnectionClosed("the client is closed")
        self._busy.add(conn)
        return conn, False

    def release(self, key: Key, conn: ControlConnection, healthy: bool) -> None:
        """Give a connection back; one in an unknown state (``healthy`` false) is closed."""
        self._busy.discard(conn)
        idle = self._idle.setdefault(key, [])
        if healthy and not self._closed and not conn.closed and len(idle) < self.max_idle:
            idle.append(conn)
        else:
            conn.abort()

    async def close(self) -> None:
        self._closed = True
        idle = [conn for conns in self._idle.values() for conn in conns]
        self._idle.clear()
        for conn in self._busy:
            conn.abort()
        self._busy.clear()
        await asyncio.gather(*(conn.quit() for conn in idle))
