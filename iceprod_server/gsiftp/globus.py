"""ctypes bindings to the Globus FTP client library (``libglobus_ftp_client.so.2``).

Only what the library backend calls is declared. Handles and attributes of this library
version are opaque pointers, so each one lives in a ``c_void_p`` whose address is what the
API takes; the library keeps that address, so the ``c_void_p`` must outlive the handle.

Loading is blocking (dlopen, module activation starts the library's threads) and happens
once per process through :func:`load`, which callers run on an executor.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import threading
from typing import Any

log = logging.getLogger(__name__)

COMMON_LIBRARY = "libglobus_common.so.0"
FTP_CLIENT_LIBRARY = "libglobus_ftp_client.so.2"

# globus_ftp_client_complete_callback_t(user_arg, handle, error)
COMPLETE_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
# globus_ftp_client_data_callback_t(user_arg, handle, error, buffer, length, offset, eof)
DATA_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                 ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64,
                                 ctypes.c_int)

_result = ctypes.c_uint32  # globus_result_t; 0 is GLOBUS_SUCCESS
_ptr = ctypes.c_void_p
_str = ctypes.c_char_p
_off = ctypes.c_int64  # globus_off_t
_bool = ctypes.c_int  # globus_bool_t

# name: (restype, argtypes); handles and attributes go as the address of their variable
_FTP_PROTOTYPES: dict[str, tuple[Any, list[Any]]] = {
    "globus_ftp_client_handleattr_init": (_result, [_ptr]),
    "globus_ftp_client_handleattr_destroy": (_result, [_ptr]),
    "globus_ftp_client_handleattr_set_cache_all": (_result, [_ptr, _bool]),
    "globus_ftp_client_handle_init": (_result, [_ptr, _ptr]),
    "globus_ftp_client_handle_destroy": (_result, [_ptr]),
    "globus_ftp_client_operationattr_init": (_result, [_ptr]),
    "globus_ftp_client_operationattr_destroy": (_result, [_ptr]),
    "globus_ftp_client_abort": (_result, [_ptr]),
    "globus_ftp_client_get": (_result, [_ptr, _str, _ptr, _ptr, COMPLETE_CALLBACK, _ptr]),
    "globus_ftp_client_put": (_result, [_ptr, _str, _ptr, _ptr, COMPLETE_CALLBACK, _ptr]),
    "globus_ftp_client_register_read": (_result, [_ptr, _ptr, ctypes.c_size_t,
                                                  DATA_CALLBACK, _ptr]),
    "globus_ftp_client_register_write": (_result, [_ptr, _ptr, ctypes.c_size_t, _off, _bool,
                                                   DATA_CALLBACK, _ptr]),
    "globus_ftp_client_machine_list": (_result, [_ptr, _str, _ptr, COMPLETE_CALLBACK, _ptr]),
    "globus_ftp_client_mkdir": (_result, [_ptr, _str, _ptr, COMPLETE_CALLBACK, _ptr]),
    "globus_ftp_client_rmdir": (_result, [_ptr, _str, _ptr, COMPLETE_CALLBACK, _ptr]),
    "globus_ftp_client_delete": (_result, [_ptr, _str, _ptr, COMPLETE_CALLBACK, _ptr]),
    "globus_ftp_client_exists": (_result, [_ptr, _str, _ptr, COMPLETE_CALLBACK, _ptr]),
    "globus_ftp_client_move": (_result, [_ptr, _str, _str, _ptr, COMPLETE_CALLBACK, _ptr]),
    "globus_ftp_client_size": (_result, [_ptr, _str, _ptr, _ptr, COMPLETE_CALLBACK, _ptr]),
    "globus_ftp_client_cksm": (_result, [_ptr, _str, _ptr, _ptr, _off, _off, _str,
                                         COMPLETE_CALLBACK, _ptr]),
}

_COMMON_PROTOTYPES: dict[str, tuple[Any, list[Any]]] = {
    "globus_module_activate": (ctypes.c_int, [_ptr]),
    "globus_module_deactivate": (ctypes.c_int, [_ptr]),
    "globus_error_get": (_ptr, [_result]),
    # returns a malloc'd string (free() it), NULL when there is nothing to say
    "globus_error_print_friendly": (_ptr, [_ptr]),
    "globus_error_print_chain": (_ptr, [_ptr]),
    "globus_object_free": (None, [_ptr]),
}


class GlobusError(Exception):
    """A Globus call failed before an operation started (bad URL, busy handle, ...)."""


class Globus:
    """The loaded, activated library: ``ftp`` and ``common`` are the ``CDLL`` objects with
    prototypes set. Get the process-wide instance with :func:`load`."""

    def __init__(self) -> None:
        self.common = ctypes.CDLL(COMMON_LIBRARY)
        self.ftp = ctypes.CDLL(FTP_CLIENT_LIBRARY)
        self._libc = ctypes.CDLL(None)
        self._libc.free.restype = None
        self._libc.free.argtypes = [_ptr]
        for library, prototypes in ((self.ftp, _FTP_PROTOTYPES),
                                    (self.common, _COMMON_PROTOTYPES)):
            for name, (restype, argtypes) in prototypes.items():
                function = getattr(library, name)
                function.restype = restype
                function.argtypes = argtypes
        self._module = ctypes.c_byte.in_dll(self.ftp, "globus_i_ftp_client_module")

    def activate(self) -> None:
        status = self.common.globus_module_activate(ctypes.addressof(self._module))
        if status != 0:
            raise GlobusError(f"globus_module_activate(globus_ftp_client) returned {status}")

    def error_text(self, error: int | None) -> str:
        """The message of a ``globus_object_t *`` error (borrowed: not freed here)."""
        if not error:
            return ""
        text = self._take_string(self.common.globus_error_print_friendly(error))
        if not text:
            text = self._take_string(self.common.globus_error_print_chain(error))
        return text or "unknown Globus error"

    def result_text(self, result: int) -> str:
        """The message of a failed ``globus_result_t``; frees its error object."""
        error = self.common.globus_error_get(result)
        try:
            return self.error_text(error)
        finally:
            if error:
                self.common.globus_object_free(error)

    def check(self, result: int, what: str) -> None:
        """Raise :class:`GlobusError` when a Globus call returned an error."""
        if result != 0:
            raise GlobusError(f"{what}: {self.result_text(result)}")

    def _take_string(self, address: int | None) -> str:
        if not address:
            return ""
        try:
            return ctypes.string_at(address).decode("utf-8", "replace").strip()
        finally:
            self._libc.free(address)


# Linux mmap flag (absent from Python 3.11's mmap module): no swap reserved up front
_MAP_NORESERVE = 0x4000
# see spacious_buffer(); the library parses a reply in time quadratic in its length
# (2 MB take more than a second), so no server gets this far within any timeout
SPACIOUS_BUFFER_SIZE = 256 << 20


def spacious_buffer() -> ctypes.Array[ctypes.c_char]:
    """A zeroed buffer for a result the library copies without a bound.

    ``globus_ftp_client_cksm`` copies the first word of the server's reply into the
    caller's buffer with ``sscanf("%s")``, so a runaway server could overflow any fixed
    buffer. This one is a lazily committed mapping of SPACIOUS_BUFFER_SIZE: a real answer
    touches one page. The mapping is unmapped when the returned array is garbage."""
    mapping = mmap.mmap(-1, SPACIOUS_BUFFER_SIZE,
                        flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE)
    return (ctypes.c_char * SPACIOUS_BUFFER_SIZE).from_buffer(mapping)


_lock = threading.Lock()
_globus: Globus | None = None


def load() -> Globus:
    """Load and activate the library once per process (blocking: run it on an executor).

    The pthread thread model must be chosen before the first activation: with the default
    model the library runs callbacks only while some thread polls it, and calls from two
    threads at once crash."""
    global _globus
    with _lock:
        if _globus is None:
            before = os.environ.get("GLOBUS_THREAD_MODEL")
            os.environ["GLOBUS_THREAD_MODEL"] = "pthread"
            try:
                globus = Globus()
                globus.activate()
            finally:
                # the model is fixed at activation; programs this process starts later
                # (globus-url-copy, pilots' modules) keep their own default
                if before is None:
                    del os.environ["GLOBUS_THREAD_MODEL"]
                else:
                    os.environ["GLOBUS_THREAD_MODEL"] = before
            log.debug("activated %s with the pthread model", FTP_CLIENT_LIBRARY)
            _globus = globus
        return _globus
