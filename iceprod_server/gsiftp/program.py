"""A program run beside the event loop, for the url-copy backend: started on a worker
thread, its pipes read and written as asyncio streams, its exit seen through a pidfd.

asyncio's own subprocess support forks and execs on the loop's thread, which under load
holds the loop for a hundred milliseconds and more per program. Here only non-blocking
work happens on the loop. Each program leads a process group of its own, so that killing
it takes anything it started along.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterable
from typing import IO

CHUNK = 1 << 20


class Program:
    """One running program. Use :meth:`start`; end with :meth:`finish` (it ran to its
    end) or :meth:`reap` (kill it if need be, close everything, collect it)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.stdout: asyncio.StreamReader | None = None
        self.input_broken = False  # it closed its stdin before taking all we fed it
        self._stdin: _PipeWriter | None = None
        self._stderr: asyncio.Future[bytes] | None = None
        self._transports: list[asyncio.BaseTransport] = []

    @classmethod
    async def start(cls, command: list[str], *, stdin: bool, stdout: bool) -> Program:
        """Start ``command`` with pipes for stderr and, as asked, stdin and stdout.
        Raises OSError when it cannot be started."""
        loop = asyncio.get_running_loop()
        spawn = loop.run_in_executor(None, _popen, command, stdin, stdout)
        try:
            proc = await asyncio.shield(spawn)
        except asyncio.CancelledError:
            spawn.add_done_callback(_abandon)
            raise
        program = cls(proc)
        try:
            assert proc.stderr is not None
            stderr = await program._reader(proc.stderr)
            program._stderr = asyncio.ensure_future(stderr.read())
            if proc.stdout is not None:
                program.stdout = await program._reader(proc.stdout)
            if proc.stdin is not None:
                transport, writer = await loop.connect_write_pipe(_PipeWriter, proc.stdin)
                program._transports.append(transport)
                program._stdin = writer
        except BaseException:
            await asyncio.shield(program.reap())
            raise
        return program

    async def _reader(self, pipe: IO[bytes]) -> asyncio.StreamReader:
        # the reader stops reading the pipe while it holds two chunks: flow control
        reader = asyncio.StreamReader(limit=CHUNK)
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe)
        self._transports.append(transport)
        return reader

    async def feed(self, chunks: AsyncIterable[bytes]) -> int:
        """Write ``chunks`` to stdin at the pace the program reads them, then close it;
        returns the bytes written."""
        assert self._stdin is not None
        sent = 0
        try:
            async for chunk in chunks:
                if chunk:
                    await self._stdin.write(chunk)
                    sent += len(chunk)
            await self._stdin.close()
        except BrokenPipeError:
            self.input_broken = True
        return sent

    async def finish(self) -> tuple[int, str]:
        """Wait for the end: the exit status and what it wrote to stderr."""
        if self._stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                await self._stdin.close()
        code = await _wait_exit(self.proc)
        assert self._stderr is not None
        return code, (await self._stderr).decode("utf-8", "replace").strip()

    def kill(self) -> None:
        _kill(self.proc)

    async def reap(self) -> None:
        """Kill the program if it still runs, close its pipes and collect it."""
        _kill(self.proc)
        for transport in self._transports:
            transport.close()
        await _wait_exit(self.proc)
        if self._stderr is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._stderr, 5.0)


class _PipeWriter(asyncio.BaseProtocol):
    """The program's stdin: ``write`` waits while the pipe is full."""

    def __init__(self) -> None:
        self._transport: asyncio.WriteTransport | None = None
        self._resumed: asyncio.Future[None] | None = None
        self._lost: asyncio.Future[Exception | None] = \
            asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        self._transport = transport

    def pause_writing(self) -> None:
        self._resumed = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._resumed is not None and not self._resumed.done():
            self._resumed.set_result(None)
        self._resumed = None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._lost.done():
            self._lost.set_result(exc)
        self.resume_writing()

    async def write(self, chunk: bytes) -> None:
        if self._lost.done() or self._transport is None:
            raise BrokenPipeError("the program closed its input")
        self._transport.write(chunk)
        if self._resumed is not None:
            await self._resumed
            if self._lost.done() and self._lost.result() is not None:
                raise BrokenPipeError("the program closed its input")

    async def close(self) -> None:
        """Send what is buffered, then end of file."""
        if self._transport is not None:
            self._transport.close()
        if await self._lost is not None:
            raise BrokenPipeError("the program closed its input")


def _popen(command: list[str], stdin: bool, stdout: bool) -> subprocess.Popen[bytes]:
    pipe, devnull = subprocess.PIPE, subprocess.DEVNULL
    # globus-url-copy crashes now and then (SIGSEGV, hangs) under the pthread thread model
    # that the library backend chooses for this process: the program gets its default
    env = {k: v for k, v in os.environ.items() if k != "GLOBUS_THREAD_MODEL"}
    return subprocess.Popen(command, stdin=pipe if stdin else devnull,
                            stdout=pipe if stdout else devnull, stderr=pipe,
                            start_new_session=True, env=env)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


async def _wait_exit(proc: subprocess.Popen[bytes]) -> int:
    """The exit status, awaited without a thread: a pidfd becomes readable on exit."""
    if proc.returncode is not None:
        return proc.returncode
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:  # kernels before 5.3: a worker thread waits instead
        return await loop.run_in_executor(None, proc.wait)
    try:
        exited: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(pidfd, readable)
        try:
            if proc.poll() is None:
                await exited
        finally:
            loop.remove_reader(pidfd)
        return proc.wait()  # it has exited: this only collects it
    finally:
        os.close(pidfd)


def _abandon(spawn: asyncio.Future[subprocess.Popen[bytes]]) -> None:
    """A program started for a caller cancelled meanwhile: kill it and collect it."""
    if spawn.cancelled() or spawn.exception() is not None:
        return
    proc = spawn.result()
    _kill(proc)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    # the loop keeps only a weak reference to tasks: hold this one until it is done
    task = asyncio.ensure_future(_wait_exit(proc))
    _abandoned.add(task)
    task.add_done_callback(_abandoned.discard)


_abandoned: set[asyncio.Future[int]] = set()
