"""Task logs as pilots upload them: plain text, or IceProd 2's zlib-compressed, base64-encoded
text, read into what is stored (a database row when small, a file under ``logs/``).

Compressed data says nothing trustworthy about its size: about 1.4 MB of compressed zeros
inflate to gigabytes. So a log is inflated a chunk at a time, and what it inflates to
counts against ``log_max_bytes``; past it the upload is refused (-32602) and nothing of it
stays. A log larger than ``log_inline_max`` goes to its file chunk by chunk as it is
inflated, so memory holds one chunk whatever the log's size. The caller runs
:func:`read_small` on the event loop (its work is bounded by ``log_inline_max``) and
:func:`read_to_file` on the fs pool.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from iceprod_server.errors import InvalidParams
from iceprod_server.files.logfiles import LogFileWriter, remove_log_file

# inflated bytes per step
CHUNK = 1024 * 1024
# data up to this many characters may be read on the event loop
SMALL_INPUT = 64 * 1024
_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]*")


@dataclass(frozen=True)
class Limits:
    inline_max: int  # larger logs go to files (log_inline_max)
    max_bytes: int  # larger logs are refused (log_max_bytes)


@dataclass(frozen=True)
class StoredLog:
    size: int  # bytes of UTF-8 text
    text: str | None  # the log, when it is kept in the database
    path: str | None  # its file, relative to the data directory, when it is not


class _NotPacked(Exception):
    """The data is not zlib+base64 after all: it is stored as the text it is."""


def _too_large(limits: Limits) -> InvalidParams:
    return InvalidParams(
        f"data: the log is larger than log_max_bytes ({limits.max_bytes} bytes) once "
        "unpacked", {"param": "data", "limit": limits.max_bytes, "option": "log_max_bytes"})


def _looks_packed(text: str) -> bool:
    return len(text) % 4 == 0 and _BASE64.fullmatch(text) is not None


def _inflated(packed: bytes, chunk: int) -> Iterator[bytes]:
    """The UTF-8 text that ``packed`` inflates to, ``chunk`` inflated bytes at a time
    (invalid UTF-8 replaced, as a whole decode would). Raises :class:`_NotPacked` for data
    that is not a complete zlib stream (the first chunk may already have been taken)."""
    inflater = zlib.decompressobj()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = packed
    try:
        while not inflater.eof:
            out = inflater.decompress(pending, chunk)
            pending = inflater.unconsumed_tail
            if not out and not pending and not inflater.eof:
                raise _NotPacked  # the stream stops before its end
            text = decoder.decode(out)
            if text:
                yield text.encode("utf-8")
    except zlib.error as e:
        raise _NotPacked from e
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail.encode("utf-8")


def _plain(data: str | bytes) -> str:
    return data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data


def _packed(text: str) -> bytes | None:
    """What base64 ``text`` decodes to, if it looks like IceProd 2's packed logs."""
    if not _looks_packed(text):
        return None
    try:
        return base64.b64decode(text, validate=False) or None
    except (binascii.Error, ValueError):
        return None


def _as_sent(text: str, chunk: int) -> Iterator[bytes]:
    encoded = text.encode("utf-8")
    for start in range(0, len(encoded), chunk):
        yield encoded[start:start + chunk]


def _read(data: str | bytes, limits: Limits, chunk: int,
          keep: Callable[[Iterator[bytes], Limits], StoredLog | None]) -> StoredLog | None:
    """``keep`` the log's UTF-8 text: inflated if the data is zlib+base64, else as sent
    (also when what looked like base64 turns out not to be a zlib stream)."""
    text = _plain(data)
    packed = _packed(text)
    if packed is not None:
        try:
            return keep(_inflated(packed, chunk), limits)
        except _NotPacked:
            pass
    return keep(_as_sent(text, chunk), limits)


def read_small(data: str | bytes, limits: Limits) -> StoredLog | None:
    """The log, if ``data`` is small and what it holds is at most ``inline_max`` bytes;
    None when it needs :func:`read_to_file`. Does at most ``inline_max`` bytes of work."""
    if len(data) > SMALL_INPUT:
        return None
    return _read(data, limits, min(CHUNK, limits.inline_max + 1), _gather)


def _gather(chunks: Iterator[bytes], limits: Limits) -> StoredLog | None:
    got: list[bytes] = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > min(limits.inline_max, limits.max_bytes):
            if size > limits.max_bytes:
                raise _too_large(limits)
            return None
        got.append(chunk)
    return StoredLog(size, b"".join(got).decode("utf-8"), None)


def read_to_file(data: str | bytes, limits: Limits, root: Path, task_id: str,
                 name: str) -> StoredLog:
    """The log, kept in a file under ``root/logs`` when larger than ``inline_max``. Blocking:
    run on the fs pool. Refused past ``max_bytes``, leaving no file behind."""
    def store(chunks: Iterator[bytes], limits: Limits) -> StoredLog:
        return _store(chunks, limits, root, task_id, name)

    stored = _read(data, limits, CHUNK, store)
    assert stored is not None
    return stored


def _store(chunks: Iterator[bytes], limits: Limits, root: Path, task_id: str,
           name: str) -> StoredLog:
    head: list[bytes] = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > limits.max_bytes:
            raise _too_large(limits)
        head.append(chunk)
        if size > limits.inline_max:
            return _spill(head, chunks, size, limits, root, task_id, name)
    return StoredLog(size, b"".join(head).decode("utf-8"), None)


def _spill(head: list[bytes], rest: Iterator[bytes], size: int, limits: Limits, root: Path,
           task_id: str, name: str) -> StoredLog:
    writer = LogFileWriter(root, task_id, name)
    try:
        for chunk in head:
            writer.append(chunk)
        head.clear()
        for chunk in rest:
            size += len(chunk)
            if size > limits.max_bytes:
                raise _too_large(limits)
            writer.append(chunk)
        path = writer.commit()
    except BaseException:
        writer.abort()  # nothing half-written stays
        raise
    return StoredLog(size, None, path)


def remove(root: Path, stored: StoredLog) -> None:
    """Delete the file of a log whose row was not stored after all."""
    if stored.path:
        remove_log_file(root, stored.path)
