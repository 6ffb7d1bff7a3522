"""A bounded pool of Globus FTP client handles, each with its operation attribute.

A handle runs one operation at a time and caches its control connections (``cache_all``),
so reusing handles saves a login per operation. Making and destroying handles blocks
(destroying one closes its cached connections), so that runs on the executor.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
from concurrent.futures import Executor

from iceprod_server.gsiftp.globus import Globus, load

log = logging.getLogger(__name__)


class Handle:
    """An initialised ``globus_ftp_client_handle_t`` and ``..._operationattr_t``.

    Both are opaque pointers that the library fills in; it keeps the address of the handle
    variable, so ``_handle`` must live as long as the handle does. Blocking: construct and
    :meth:`destroy` on an executor."""

    def __init__(self, globus: Globus) -> None:
        self._globus = globus
        self._handle = ctypes.c_void_p()
        self._attr = ctypes.c_void_p()
        ftp = globus.ftp
        handleattr = ctypes.c_void_p()
        globus.check(ftp.globus_ftp_client_handleattr_init(ctypes.addressof(handleattr)),
                     "globus_ftp_client_handleattr_init")
        try:
            globus.check(ftp.globus_ftp_client_handleattr_set_cache_all(
                ctypes.addressof(handleattr), 1), "globus_ftp_client_handleattr_set_cache_all")
            globus.check(ftp.globus_ftp_client_handle_init(
                ctypes.addressof(self._handle), ctypes.addressof(handleattr)),
                "globus_ftp_client_handle_init")
        finally:
            # the handle keeps its own copy of the attribute
            ftp.globus_ftp_client_handleattr_destroy(ctypes.addressof(handleattr))
        # some operations (exists) crash on a NULL attribute, so every call gets this one
        result = ftp.globus_ftp_client_operationattr_init(ctypes.addressof(self._attr))
        if result != 0:
            ftp.globus_ftp_client_handle_destroy(ctypes.addressof(self._handle))
            globus.check(result, "globus_ftp_client_operationattr_init")

    @property
    def address(self) -> int:
        """The ``globus_ftp_client_handle_t *`` to pass to operations."""
        return ctypes.addressof(self._handle)

    @property
    def attr(self) -> int:
        """The ``globus_ftp_client_operationattr_t *`` to pass to operations."""
        return ctypes.addressof(self._attr)

    def destroy(self) -> None:
        ftp = self._globus.ftp
        ftp.globus_ftp_client_operationattr_destroy(ctypes.addressof(self._attr))
        result = ftp.globus_ftp_client_handle_destroy(ctypes.addressof(self._handle))
        if result != 0:
            log.warning("destroying a GridFTP handle: %s", self._globus.result_text(result))


def _make_handle() -> Handle:
    return Handle(load())


class HandlePool:
    """At most ``size`` handles exist; an operation waits for a free one. Idle handles are
    kept for reuse until :meth:`close`."""

    def __init__(self, executor: Executor, size: int) -> None:
        self._executor = executor
        self._size = size
        self._slots: asyncio.Semaphore | None = None
        self._idle: list[Handle] = []
        self._closed = False

    async def acquire(self) -> Handle:
        if self._closed:
            raise RuntimeError("the GridFTP client is closed")
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._size)
        await self._slots.acquire()
        if self._idle:
            return self._idle.pop()
        made = asyncio.get_running_loop().run_in_executor(self._executor, _make_handle)
        try:
            return await asyncio.shield(made)
        except BaseException:
            self._slots.release()
            # a handle still being made when the caller gave up is kept for the next one
            made.add_done_callback(self._keep_made)
            raise

    def _keep_made(self, made: asyncio.Future[Handle]) -> None:
        if not made.cancelled() and made.exception() is None:
            if self._closed:
                self._destroy_later(made.result())
            else:
                self._idle.append(made.result())

    def release(self, handle: Handle) -> None:
        """Give back a handle whose operation has completed (on the loop)."""
        if self._closed:
            self._destroy_later(handle)
        else:
            self._idle.append(handle)
        assert self._slots is not None
        self._slots.release()

    async def close(self) -> None:
        """Destroy the idle handles; handles still busy are destroyed when released."""
        self._closed = True
        idle, self._idle = self._idle, []
        loop = asyncio.get_running_loop()
        for handle in idle:
            await loop.run_in_executor(self._executor, handle.destroy)

    def _destroy_later(self, handle: Handle) -> None:
        try:
            self._executor.submit(handle.destroy)
        except RuntimeError:
            log.warning("GridFTP handle released after its executor shut down; not destroyed")
