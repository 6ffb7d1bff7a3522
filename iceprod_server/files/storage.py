"""Files under ``<data-dir>/files``: safe paths, reading byte ranges, and storing uploads.

Everything that touches the disk here blocks (open, read, write, fsync, rename): the
handlers in :mod:`iceprod_server.handlers.files` run it on the ``fs`` pool. The small
parsers for ``Range`` and ``X-Checksum`` live here too, next to the sizes and digests they
are checked against.

An upload never shows at its target until it is complete and verified: the body goes to
a temporary file in the target's directory, which is fsynced and renamed over the target
(:func:`os.replace`), so a reader sees the old file or the new one, never a mix. A body
that nginx buffered to disk is moved into place the same way, without a copy when it is
on the same filesystem.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mimetypes
import os
import re
import secrets
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

ALGORITHMS = ("md5", "sha1", "sha256", "sha512")
COPY_CHUNK = 1024 * 1024
_RANGE = re.compile(r"(\d*)-(\d*)", re.ASCII)
_HEX = re.compile(r"[0-9a-fA-F]+", re.ASCII)
# how compressed files are labelled: as what they are, never as Content-Encoding, which
# would make a client unpack them
_ENCODED_TYPES = {"gzip": "application/gzip", "bzip2": "application/x-bzip2",
                  "xz": "application/x-xz", "compress": "application/x-compress"}


class BadPath(Exception):
    """The path leaves the files directory, or does not name a file there."""


class NotAFile(Exception):
    """The upload's target, or one of its parents, is in the way (a directory or a file)."""


class Mismatch(Exception):
    """The body's size or checksum is not what the client said."""


class TooLarge(Exception):
    """The body is over the upload limit."""


class RangeNotSatisfiable(Exception):
    """The ``Range`` header names no byte of the file."""


# -- paths -------------------------------------------------------------------------------

def normalize(path: str) -> str | None:
    """``path`` (already URL-decoded) relative to the files directory, with empty and
    ``.`` segments dropped; None when it could lead outside (``..``, absolute, NUL)."""
    if "\x00" in path or path.startswith("/"):
        return None
    parts = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            return None
        parts.append(part)
    return "/".join(parts)


def _inside(root: Path, relpath: str) -> Path | None:
    """The real path of ``root/relpath`` (symlinks followed) if it exists inside root."""
    try:
        path = (root / relpath).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return path if path.is_relative_to(root) else None


def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


# a moved nginx buffer (created 0600) gets the mode a file written by the server has
FILE_MODE = 0o666 & ~_umask()


# -- downloads ---------------------------------------------------------------------------

@dataclass
class Opened:
    """A file opened for reading: read it with ``os.pread(fd, ...)``, then close ``fd``."""

    fd: int
    size: int
    mtime: float
    etag: str
    content_type: str
    real_relpath: str


def etag_for(st: os.stat_result) -> str:
    """A strong ETag: a replaced or rewritten file gets a new one (new inode or mtime)."""
    return f'"{st.st_size:x}-{st.st_mtime_ns:x}-{st.st_ino:x}"'


def content_type(name: str) -> str:
    kind, encoding = mimetypes.guess_type(name, strict=False)
    if encoding:
        return _ENCODED_TYPES.get(encoding, "application/octet-stream")
    return kind or "application/octet-stream"


def open_for_read(root: Path, relpath: str) -> Opened | None:
    """The regular file at ``relpath`` under ``root``, opened; None if it is missing, not
    a regular file, or (through a symlink) outside root."""
    root = root.resolve()
    path = _inside(root, relpath)
    if path is None:
        return None
    try:
        # O_NONBLOCK: opening a FIFO must not hang a pool thread; regular files ignore it
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return Opened(fd, st.st_size, st.st_mtime, etag_for(st), content_type(path.name),
                  str(path.relative_to(root)))


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The ``(start, end)`` (end exclusive) of a single ``bytes=`` range, clamped to the
    file; None to send the whole file (no header, another unit, or several ranges).

    Raises :class:`RangeNotSatisfiable` for a range past the end, a malformed one, or any
    range of an empty file."""
    if not header:
        return None
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    spec = spec.strip()
    if "," in spec:
        return None
    match = _RANGE.fullmatch(spec)
    if match is None or match.group(1) == match.group(2) == "":
        raise RangeNotSatisfiable(spec)
    first, last = match.groups()
    if first == "":
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(spec)
        return max(0, size - suffix), size
    start = int(first)
    end = size if last == "" else int(last) + 1
    if start >= size or end <= start:
        raise RangeNotSatisfiable(spec)
    return start, min(end, size)


def etag_matches(header: str, etag: str) -> bool:
    """Whether an ``If-None-Match`` list names ``etag`` (weak comparison, as RFC 9110
    asks for this header)."""
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


# -- uploads -----------------------------------------------------------------------------

def parse_checksums(header: str) -> dict[str, str]:
    """``X-Checksum: sha512=<hex>[, md5=<hex>...]`` as ``{algorithm: lowercase hex}``.
    Raises ValueError with a message for the client."""
    digests: dict[str, str] = {}
    for item in header.split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        name, value = name.strip().lower(), value.strip()
        if not sep or name not in ALGORITHMS:
            raise ValueError(f"unknown checksum algorithm {name!r} in X-Checksum; use "
                             f"{', '.join(ALGORITHMS)} as ALGORITHM=HEX")
        if not _HEX.fullmatch(value) or len(value) != 2 * hashlib.new(name).digest_size:
            raise ValueError(f"X-Checksum {name} must be {2 * hashlib.new(name).digest_size}"
                             " hex digits")
        digests[name] = value.lower()
    return digests


@dataclass
class Stored:
    """A file in place: what the client is told."""

    relpath: str
    size: int
    sha512: str
    created: bool


def _target(root: Path, relpath: str) -> tuple[Path, Path]:
    """The real directory of ``relpath`` (made if missing) and the target in it.

    Parents are made one at a time, each checked before the next, so a symlink among
    them cannot make us create directories outside root."""
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    *parents, name = relpath.split("/")
    directory = root
    for part in parents:
        directory = directory / part
        with contextlib.suppress(FileExistsError):
            try:
                os.mkdir(directory)
            except NotADirectoryError as e:
                raise NotAFile(f"{relpath}: a parent is a file") from e
        directory = directory.resolve()
        if not directory.is_relative_to(root):
            raise BadPath(relpath)
        if not directory.is_dir():
            raise NotAFile(f"{relpath}: a parent is a file")
    target = directory / name
    if target.is_dir():
        raise NotAFile(f"{relpath} is a directory")
    return directory, target


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hashers(algorithms: Iterable[str]) -> dict[str, hashlib._Hash]:
    return {name: hashlib.new(name) for name in {"sha512", *algorithms}}


def _verify(size: int, hashers: Mapping[str, hashlib._Hash], expected_size: int | None,
            digests: Mapping[str, str]) -> None:
    if expected_size is not None and size != expected_size:
        raise Mismatch(f"received {size} bytes, expected {expected_size}")
    for name, want in digests.items():
        got = hashers[name].hexdigest()
        if got != want:
            raise Mismatch(f"{name} checksum mismatch: the body's is {got}")


class Upload:
    """One body being written to a temporary file next to its target.

    Calls are made one at a time (the handler serialises them); :meth:`discard` may come
    at any point, also after :meth:`commit`, when it does nothing."""

    def __init__(self, root: Path, relpath: str, algorithms: Iterable[str]) -> None:
        self.relpath = relpath
        directory, self.target = _target(root, relpath)
        self.real_relpath = str(self.target.relative_to(root.resolve()))
        # hidden, and unique so that concurrent uploads of one path never share a file
        self.temp = directory / f".{self.target.name[:200]}.{secrets.token_hex(8)}.part"
        self.fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                          0o666)
        self.hashers = _hashers(algorithms)
        self.size = 0
        self.committed = False

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        for hasher in self.hashers.values():
            hasher.update(data)
        self.size += len(data)

    def commit(self, expected_size: int | None, digests: Mapping[str, str]) -> Stored:
        """Check size and checksums, then fsync and rename over the target. On any
        failure the temporary file is removed and the target is left as it was."""
        try:
            _verify(self.size, self.hashers, expected_size, digests)
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            created = not os.path.lexists(self.target)
            try:
                os.replace(self.temp, self.target)
            except IsADirectoryError as e:
                raise NotAFile(f"{self.relpath} is a directory") from e
            self.committed = True
            _fsync_dir(self.target.parent)
        except BaseException:
            self.discard()
            raise
        return Stored(self.relpath, self.size, self.hashers["sha512"].hexdigest(), created)

    def discard(self) -> None:
        if self.committed:
            return
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp)


# -- bodies buffered by nginx ------------------------------------------------------------

def buffered_file(header: str, upload_dir: Path) -> Path | None:
    """The file that ``X-Upload-File`` names, if it is a regular file (not a symlink)
    inside ``upload_dir``; else None."""
    path = Path(header)
    if "\x00" in header or not path.is_absolute() or path.name in ("", ".", ".."):
        return None
    try:
        directory = path.parent.resolve(strict=True)
        if not directory.is_relative_to(upload_dir.resolve(strict=True)):
            return None
        source = directory / path.name
        return source if stat.S_ISREG(source.lstat().st_mode) else None
    except (OSError, RuntimeError):
        return None


def remove_buffered(source: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(source)


def adopt_buffered(source: Path, root: Path, relpath: str, expected_size: int | None,
                   digests: Mapping[str, str], max_bytes: int) -> Stored:
    """Verify nginx's buffered body and move it to ``relpath``: a rename on the same
    filesystem, else a copy to a temporary file in the target directory and a rename.
    ``source`` is gone afterwards, whatever happens."""
    moved = False
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise BadPath(str(source))
            if st.st_size > max_bytes:
                raise TooLarge(f"the body is over {max_bytes} bytes")
            directory, target = _target(root, relpath)
            if os.stat(directory).st_dev != st.st_dev:
                return _copy_in(fd, root, relpath, expected_size, digests)
            hashers = _hashers(digests)
            size = 0
            while chunk := os.read(fd, COPY_CHUNK):
                size += len(chunk)
                for hasher in hashers.values():
                    hasher.update(chunk)
            _verify(size, hashers, expected_size, digests)
            os.fchmod(fd, FILE_MODE)
            os.fsync(fd)
            created = not os.path.lexists(target)
            try:
                os.replace(source, target)
            except IsADirectoryError as e:
                raise NotAFile(f"{relpath} is a directory") from e
            moved = True
            _fsync_dir(directory)
            return Stored(relpath, size, hashers["sha512"].hexdigest(), created)
        finally:
            os.close(fd)
    finally:
        if not moved:
            remove_buffered(source)


def _copy_in(fd: int, root: Path, relpath: str, expected_size: int | None,
             digests: Mapping[str, str]) -> Stored:
    upload = Upload(root, relpath, digests)
    try:
        while chunk := os.read(fd, COPY_CHUNK):
            upload.write(chunk)
    except BaseException:
        upload.discard()
        raise
    return upload.commit(expected_size, digests)


def storage_full(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT)
