"""Globus operations as asyncio objects: completion, and streaming reads and writes.

The library calls back on its own threads. The two C callbacks here are made once, for the
life of the process, and find their operation by the integer ``user_arg`` it was started
with; they touch nothing but the operation's loop, through ``call_soon_threadsafe``, except
for a stream that says it handles its data on the library's thread
(:class:`.filesink.FileSink`). An operation stays in the registry, and so keeps every
buffer registered with the library alive, until its completion callback has fired: the
library calls that one last, after every data callback of the operation has returned.
"""

from __future__ import annotations

import asyncio
import ctypes
import inspect
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from iceprod_server.gsiftp.globus import COMPLETE_CALLBACK, DATA_CALLBACK, Globus
from iceprod_server.gsiftp.handles import Handle

log = logging.getLogger(__name__)

BUFFER_SIZE = 1 << 20
# buffers registered at once per transfer: enough to keep a loopback transfer busy while
# the loop handles the previous chunk; memory per transfer is DEPTH * BUFFER_SIZE
DEPTH = 4

_operations: dict[int, Operation] = {}
_keys = itertools.count(1)


class Stream(Protocol):
    """The data side of an operation, to which the library's data callbacks go."""

    # False: ``returned`` runs on the operation's loop. True: it runs on the library's
    # thread, while the library waits, so it must be quick, thread-safe and never raise
    on_library_thread: bool

    def returned(self, buffer: int, length: int, offset: int, eof: bool,
                 error: str) -> None: ...


class Operation:
    """One operation on one handle, from its start to the library's completion callback.

    ``done`` resolves (on the loop) with the library's error text, "" on success; it is
    never cancelled, so waiting on it must go through ``asyncio.shield``."""

    def __init__(self, globus: Globus, loop: asyncio.AbstractEventLoop, handle: Handle) -> None:
        self.globus = globus
        self.loop = loop
        self.handle = handle
        self.key = next(_keys)
        self.done: asyncio.Future[str] = loop.create_future()
        # memory the library reads or writes until completion (result buffers, streams)
        self.keep: list[object] = []
        # called on the loop at completion, before anyone waiting on done resumes
        self.on_completed: Callable[[], None] | None = None
        self.stream: Stream | None = None
        _operations[self.key] = self

    @property
    def arg(self) -> int:
        """The ``user_arg`` to give every Globus call of this operation."""
        return self.key

    def forget(self) -> None:
        """Drop an operation whose start failed (no callback will come)."""
        _operations.pop(self.key, None)

    def abort(self) -> None:
        if not self.done.done():
            result = self.globus.ftp.globus_ftp_client_abort(self.handle.address)
            if result != 0:
                # nothing in progress right now (between the steps of a compound
                # operation, or already completing): free the error and try again later
                self.globus.result_text(result)

    def _completed(self, error: str) -> None:
        if not self.done.done():
            if self.on_completed is not None:
                self.on_completed()
            self.done.set_result(error)


def call_on_loop(op: Operation, fn: Callable[..., None], *args: object) -> None:
    try:
        op.loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        # the loop is closed: nobody waits any more, and the buffers die with op
        log.debug("GridFTP callback after its event loop closed")


@COMPLETE_CALLBACK
def on_complete(user_arg: int | None, handle: int | None, error: int | None) -> None:
    try:
        op = _operations.pop(user_arg or 0, None)
        if op is not None:
            call_on_loop(op, op._completed, op.globus.error_text(error) if error else "")
    except Exception:  # an exception must not unwind into C
        log.exception("GridFTP completion callback failed")


@DATA_CALLBACK
def on_data(user_arg: int | None, handle: int | None, error: int | None,
             buffer: int | None, length: int, offset: int, eof: int) -> None:
    try:
        op = _operations.get(user_arg or 0)
        if op is None or op.stream is None:
            return
        text = op.globus.error_text(error) if error else ""
        if op.stream.on_library_thread:
            op.stream.returned(buffer or 0, length, offset, bool(eof), text)
        else:
            call_on_loop(op, op.stream.returned, buffer or 0, length, offset, bool(eof), text)
    except Exception:
        log.exception("GridFTP data callback failed")


ChunkConsumer = Callable[[bytes], Awaitable[None] | None]


class Reader:
    """Reads the data of a started get or listing with DEPTH registered buffers.

    A buffer is registered again only after its chunk was consumed (and the consumer's
    awaitable, if any, finished), so a slow consumer stops the transfer instead of filling
    memory. Chunks are handed over in offset order whatever order the reads complete in."""

    on_library_thread = False

    def __init__(self, op: Operation, depth: int = DEPTH, size: int = BUFFER_SIZE) -> None:
        self._op = op
        self._size = size
        self._buffers = {ctypes.addressof(b): b
                         for b in (ctypes.create_string_buffer(size) for _ in range(depth))}
        self._idle = list(self._buffers)
        self._outstanding: set[int] = set()
        self._ready: dict[int, tuple[int, bytes]] = {}  # offset -> (buffer, chunk)
        self._offset = 0
        self._wakeup: asyncio.Future[None] | None = None
        self.eof = False
        self.error = ""
        op.stream = self

    def returned(self, buffer: int, length: int, offset: int, eof: bool, error: str) -> None:
        """A registered read came back (on the loop)."""
        self._outstanding.discard(buffer)
        self.error = self.error or error
        self.eof = self.eof or eof
        if length and not error:
            # copied here rather than on the library's thread: the buffer is not
            # registered again before its chunk is consumed anyway, and allocating on the
            # loop thread keeps the memory in one malloc arena
            self._ready[offset] = (buffer, ctypes.string_at(buffer, length))
        else:
            self._idle.append(buffer)
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def pump(self, consume: ChunkConsumer) -> None:
        """Feed every chunk to ``consume`` until end of data or failure; on failure it
        returns early and the operation's completion says why."""
        while True:
            # also re-registers buffers that came back empty without end of data
            self._register_idle()
            item = self._ready.pop(self._offset, None)
            if item is None:
                if self.error or not self._outstanding:
                    if self._ready and not self.error:
                        self.error = f"data missing at offset {self._offset}"
                    return
                self._wakeup = self._op.loop.create_future()
                await self._wakeup
                continue
            buffer, chunk = item
            self._offset += len(chunk)
            result = consume(chunk)
            if inspect.isawaitable(result):
                await result
            self._idle.append(buffer)

    def _register_idle(self) -> None:
        ftp = self._op.globus.ftp
        while self._idle and not (self.eof or self.error):
            buffer = self._idle.pop()
            result = ftp.globus_ftp_client_register_read(
                self._op.handle.address, buffer, self._size, on_data, self._op.arg)
            if result != 0:
                # the operation already ended; its completion carries the reason
                self._op.globus.result_text(result)
                self._idle.append(buffer)
                return
            self._outstanding.add(buffer)


class Writer:
    """Writes the data of a started put with up to DEPTH buffers in flight."""

    on_library_thread = False

    def __init__(self, op: Operation, depth: int = DEPTH) -> None:
        self._op = op
        self._depth = depth
        self._outstanding: dict[int, ctypes.Array[ctypes.c_char]] = {}
        self._wakeup: asyncio.Future[None] | None = None
        self.sent = 0
        self.error = ""
        op.stream = self

    def returned(self, buffer: int, length: int, offset: int, eof: bool, error: str) -> None:
        self._outstanding.pop(buffer, None)
        self.error = self.error or error
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def write(self, chunk: bytes | memoryview, eof: bool = False) -> bool:
        """Hand ``chunk`` to the library once a slot is free; False when the transfer
        failed (the operation's completion says why)."""
        while len(self._outstanding) >= self._depth and not self.error:
            await self._wait()
        if self.error:
            return False
        buffer = (ctypes.c_char * max(len(chunk), 1)).from_buffer_copy(chunk or b"\0")
        address = ctypes.addressof(buffer)
        result = self._op.globus.ftp.globus_ftp_client_register_write(
            self._op.handle.address, address, len(chunk), self.sent, int(eof), on_data,
            self._op.arg)
        if result != 0:
            self.error = self._op.globus.result_text(result)
            return False
        self._outstanding[address] = buffer
        self.sent += len(chunk)
        return True

    async def finish(self) -> bool:
        """Send end of data and wait until the library has taken every buffer."""
        if not await self.write(b"", eof=True):
            return False
        while self._outstanding and not self.error:
            await self._wait()
        return not self.error

    async def _wait(self) -> None:
        self._wakeup = self._op.loop.create_future()
        await self._wakeup
