"""A get written to a local file from the library's own threads.

Going through the loop costs a thread hop, a copy and an executor hop per chunk, which
made downloads to a file far slower than downloads to a callback. Here each read callback
writes its buffer at its offset with ``os.pwrite`` (so reads may complete in any order) and
registers the buffer again, all on the library's thread; the loop hears only of a failed
write, and of the operation's completion through the runner.

The callback holds the GIL only for a few Python lines: ``os.pwrite`` releases it for the
syscall. The sink never calls into the library while holding its own lock: should the
library run a callback while holding a lock of its own, that would be two locks taken in
opposite orders by two threads.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import threading

from iceprod_server.gsiftp.transfer import BUFFER_SIZE, DEPTH, Operation, call_on_loop, on_data

log = logging.getLogger(__name__)


class FileSink:
    """Writes the data of a started get to the open file ``fd`` with DEPTH buffers.

    The sink never closes ``fd`` by itself; :meth:`close` does, and from then on writes
    nothing, so a callback that comes after an operation was given up cannot write into a
    file descriptor number that was reused meanwhile."""

    on_library_thread = True

    def __init__(self, op: Operation, fd: int, depth: int = DEPTH,
                 size: int = BUFFER_SIZE) -> None:
        self._op = op
        self._fd = fd
        self._size = size
        # kept until the sink itself is dropped, which op.stream delays to completion
        self._buffers = [ctypes.create_string_buffer(size) for _ in range(depth)]
        self._views = {ctypes.addressof(b): memoryview(b) for b in self._buffers}
        self._lock = threading.Lock()
        self._stopped: asyncio.Future[None] = op.loop.create_future()
        self._eof = False
        self._closed = False
        self._written = 0  # bytes written
        self._end = 0  # the end of the furthest chunk written
        self.error = ""  # the library's, from a data callback
        self.failure: BaseException | None = None  # the file's
        op.stream = self

    async def run(self) -> None:
        """Register the buffers and wait until the operation completes, or until the
        file failed, then raise its error (the runner then aborts the operation)."""
        for address in self._views:
            if self._wanted():
                self._register(address)
        self._op.done.add_done_callback(lambda _: self._stop())
        await self._stopped
        if self.failure is not None:
            raise self.failure

    def missing(self) -> str:
        """After a successful completion: what is wrong with the file, "" if nothing."""
        if self._written != self._end:
            return f"{self._end - self._written} bytes of {self._end} never arrived"
        return ""

    def close(self) -> None:
        """Close the file, once any write in progress is over (blocking: run it on an
        executor)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._fd)

    def returned(self, buffer: int, length: int, offset: int, eof: bool, error: str) -> None:
        """A registered read came back (on the library's thread)."""
        failed = False
        with self._lock:
            self.error = self.error or error
            # data is written even after end of data was seen: the last chunk comes with
            # it, and with several streams another read may complete later with data
            if length and self._writable():
                try:
                    self._write(buffer, length, offset)
                except Exception as exc:  # nothing may unwind into the library
                    self.failure = exc
                    failed = True
            self._eof = self._eof or eof
            again = self._wanted()
        if failed:
            call_on_loop(self._op, self._stop)
        elif again:
            self._register(buffer)

    def _writable(self) -> bool:
        return not (self.error or self.failure is not None or self._closed)

    def _wanted(self) -> bool:
        """Whether to register reads: more data may come and would be written."""
        return not self._eof and self._writable()

    def _write(self, buffer: int, length: int, offset: int) -> None:
        view = self._views[buffer][:length]
        end = offset + length
        while view:
            written = os.pwrite(self._fd, view, offset)
            if written <= 0:
                raise OSError(f"writing at offset {offset} wrote nothing")
            view = view[written:]
            offset += written
        self._written += length
        self._end = max(self._end, end)

    def _register(self, buffer: int) -> None:
        """Hand ``buffer`` to the library (from the loop or the library's thread)."""
        op = self._op
        result = op.globus.ftp.globus_ftp_client_register_read(
            op.handle.address, buffer, self._size, on_data, op.arg)
        if result != 0:
            # the operation already ended (or its data did, as seen by another read); its
            # completion carries the reason
            log.debug("GridFTP read not registered: %s", op.globus.result_text(result))

    def _stop(self) -> None:
        if not self._stopped.done():
            self._stopped.set_result(None)
