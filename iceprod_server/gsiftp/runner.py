"""Running Globus operations from asyncio: handles, deadlines, aborts and typed errors.

An operation takes a handle from the pool, is started from the loop thread (starting only
registers work with the library and returns at once) and ends with the library's
completion callback. On a timeout, a cancellation or a failure of the caller's side of a
transfer the operation is aborted, and its completion awaited before the handle goes back
to the pool, since a handle is reusable only after that callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from iceprod_server.gsiftp import errors
from iceprod_server.gsiftp.globus import Globus, GlobusError, load
from iceprod_server.gsiftp.handles import HandlePool
from iceprod_server.gsiftp.listing import classify
from iceprod_server.gsiftp.transfer import Operation, on_complete

log = logging.getLogger(__name__)

# handles (so connections and concurrent operations) per client; more operations queue
MAX_HANDLES = 32
# how long an aborted operation may take to report its completion before its handle is
# given up (never reused nor destroyed, since the library may still touch it)
ABORT_GRACE = 30.0

_BROKEN_CONNECTION = re.compile(r"end.of.file|unexpected eof|connection (was )?closed",
                                re.IGNORECASE)
# GSI failing on our side (no or bad credentials, untrusted server); its long message says
# "could not be found" about certificate files, which is no missing remote file
_GSI_FAILURE = re.compile(r"gss_init_sec_context|GSS failure|globus_gsi|globus_credential",
                          re.IGNORECASE)

# starts an operation on op.handle and returns the globus_result_t of the start
Starter = Callable[[Operation], int]
Body = Callable[[Operation], Awaitable[None]]


class Runner:
    """Runs operations for one client; :meth:`close` aborts what still runs and destroys
    the handles. ``executor`` runs the blocking calls (loading, handle set-up)."""

    def __init__(self, executor: Executor | None) -> None:
        self._own_executor = executor is None
        self.executor: Executor = executor or ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="gsiftp")
        self._pool = HandlePool(self.executor, MAX_HANDLES)
        self._globus: Globus | None = None
        self._active: set[Operation] = set()

    @contextlib.asynccontextmanager
    async def deadline(self, url: str, seconds: float) -> AsyncIterator[None]:
        """Everything in the block, operations and local work, must end within
        ``seconds``; operations still running then are aborted."""
        limit = asyncio.timeout(seconds)
        try:
            async with limit:
                yield
        except TimeoutError as exc:
            if not limit.expired():
                raise  # someone else's timeout, e.g. a chunk consumer's
            raise errors.TimeoutError(url, f"no result within {seconds:g} s; aborted") from exc

    async def run(self, url: str, start: Starter, body: Body | None = None) -> None:
        """Start an operation on a pooled handle, run ``body`` (the caller's side of a
        data transfer) and wait for completion; raise the typed error when it failed."""
        loop = asyncio.get_running_loop()
        if self._globus is None:
            try:
                self._globus = await loop.run_in_executor(self.executor, load)
            except OSError as exc:
                raise errors.UnsupportedError(
                    url, f"cannot load the Globus FTP client library ({exc}); install the "
                    "Debian package libglobus-ftp-client2 or use the url-copy backend"
                ) from exc
        try:
            handle = await self._pool.acquire()
        except GlobusError as exc:
            raise errors.GridFTPError(url, str(exc)) from exc
        op = Operation(self._globus, loop, handle)
        try:
            result = start(op)
        except BaseException:
            op.forget()
            self._pool.release(handle)
            raise
        if result != 0:
            op.forget()
            self._pool.release(handle)
            raise typed_error(url, self._globus.result_text(result))
        # released from the completion itself: a done-callback would run only after the
        # waiter below has resumed, and perhaps closed the pool
        op.on_completed = lambda: self._pool.release(handle)
        self._active.add(op)
        try:
            if body is not None:
                await body(op)
            error = await asyncio.shield(op.done)
        except GeneratorExit:
            # the coroutine is closed without its loop: nothing can be awaited any more
            op.abort()
            raise
        except BaseException:
            await self._abort(op)
            raise
        finally:
            self._active.discard(op)
        if error:
            raise typed_error(url, error)

    def call(self, name: str, url: str, *extra: Any) -> Starter:
        """A starter for ``globus_ftp_client_<name>(handle, url, attr, *extra, callback,
        arg)``, the shape of most operations."""
        def start(op: Operation) -> int:
            fn = getattr(op.globus.ftp, f"globus_ftp_client_{name}")
            return int(fn(op.handle.address, globus_url(url), op.handle.attr, *extra,
                          on_complete, op.arg))
        return start

    async def _abort(self, op: Operation) -> None:
        """Abort ``op`` and wait for its completion. Compound operations (exists runs
        MDTM, then SIZE, then a listing) go on to their next step after an abort, so the
        abort is repeated until the completion comes."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + ABORT_GRACE
        interval = 0.02
        while not op.done.done():
            op.abort()
            try:
                await asyncio.wait_for(asyncio.shield(op.done), interval)
            except TimeoutError:
                if loop.time() >= give_up:
                    log.warning("an aborted GridFTP operation did not complete within %g s; "
                                "its handle is given up", ABORT_GRACE)
                    return
                interval = min(interval * 2, 1.0)

    async def close(self) -> None:
        for op in list(self._active):
            op.abort()
        for op in list(self._active):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(op.done), ABORT_GRACE)
        await self._pool.close()
        if self._own_executor:
            self.executor.shutdown(wait=False)


def typed_error(url: str, text: str) -> errors.GridFTPError:
    """The typed error for a Globus error text. The library reports a connection that
    broke mid-transfer as "an end-of-file was reached", which is a connection problem."""
    if _GSI_FAILURE.search(text):
        return errors.PermissionDeniedError(url, " ".join(text.split()))
    error = classify(url, text)
    if type(error) is errors.GridFTPError and _BROKEN_CONNECTION.search(text):
        return errors.ConnectionError(url, error.detail)
    return error


def globus_url(url: str) -> bytes:
    """``url`` as the library takes it. Its parser refuses "#", which goes
    percent-encoded (the library decodes %XX), and non-ASCII names, which it cannot
    address at all (percent-encoded UTF-8 comes out mangled)."""
    if not url.isascii():
        raise errors.UnsupportedError(url, "the Globus library takes ASCII URLs only")
    return url.replace("#", "%23").encode("ascii")
