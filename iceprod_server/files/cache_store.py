"""The cache directory on disk: entries, fills in progress, and their metadata. Blocking
functions, called on the ``fs`` pool by :mod:`iceprod_server.files.cache`."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class Entry:
    key: str
    url: str
    size: int
    sha512: str
    last_used: float


def key_for(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


# -- disk work (blocking: run on the fs pool) ----------------------------------------------

def entry_dir(root: Path, key: str) -> Path:
    return root / "entries" / key[:2] / key


def read_meta(folder: Path) -> Entry | None:
    meta = folder / "meta.json"
    try:
        raw = json.loads(meta.read_text())
        return Entry(folder.name, str(raw["url"]), int(raw["size"]), str(raw["sha512"]),
                     meta.stat().st_mtime)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def scan(root: Path, startup: bool) -> list[Entry]:
    """The valid entries, oldest use first; removes broken entries and the temporary
    directories of processes that are gone (at start-up, also this pid's: a predecessor's)."""
    (root / "entries").mkdir(parents=True, exist_ok=True)
    (root / "tmp").mkdir(exist_ok=True)
    for path in (root / "tmp").iterdir():
        pid_text = path.name.split(".")[1] if path.name.count(".") >= 2 else ""
        pid = int(pid_text) if pid_text.isdigit() else 0
        if (pid == os.getpid() and startup) or (pid != os.getpid() and not pid_alive(pid)):
            shutil.rmtree(path, ignore_errors=True)
    entries = []
    for fan in (root / "entries").iterdir():
        for folder in fan.iterdir() if fan.is_dir() else ():
            entry = read_meta(folder)
            try:
                ok = entry is not None and (folder / "data").stat().st_size == entry.size
            except OSError:
                ok = False
            if entry is not None and ok:
                entries.append(entry)
            elif age(folder) > 60:
                # an incomplete entry; a young one may be another process's rename
                evict(root, folder.name)
    return sorted(entries, key=lambda e: e.last_used)


def age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def open_entry(root: Path, key: str, keep_open: bool) -> tuple[Entry, int] | None:
    """The entry and its data opened for reading (-1 unless ``keep_open``), marked as just
    used; None when there is no such entry."""
    folder = entry_dir(root, key)
    try:
        fd = os.open(folder / "data", os.O_RDONLY)
    except FileNotFoundError:
        return None
    entry = read_meta(folder)
    if entry is None or os.fstat(fd).st_size != entry.size:
        os.close(fd)
        return None
    try:
        os.utime(folder / "meta.json")
        entry.last_used = time.time()
    except FileNotFoundError:  # evicted meanwhile; the open file is still whole
        pass
    if not keep_open:
        os.close(fd)
        fd = -1
    return entry, fd


def new_temp(root: Path, key: str) -> tuple[Path, int, int]:
    folder = root / "tmp" / f"{key}.{os.getpid()}.{secrets.token_hex(6)}"
    folder.mkdir(parents=True)
    wfd = os.open(folder / "data", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    return folder, wfd, os.open(folder / "data", os.O_RDONLY)


def write_all(fd: int, data: bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def publish(root: Path, folder: Path, wfd: int, entry: Entry) -> None:
    """Move a complete fill into place, with its metadata in the same rename."""
    os.close(wfd)
    meta = {k: v for k, v in asdict(entry).items() if k in ("url", "size", "sha512")}
    (folder / "meta.json").write_text(json.dumps(meta))
    dest = entry_dir(root, entry.key)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(folder, dest)
    except OSError as e:
        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        shutil.rmtree(folder, ignore_errors=True)  # another process put it there first


def discard(folder: Path | None, wfd: int | None) -> None:
    if wfd is not None:
        os.close(wfd)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def evict(root: Path, key: str) -> None:
    trash = root / "tmp" / f"{key}.{os.getpid()}.{secrets.token_hex(6)}.evicted"
    try:
        os.rename(entry_dir(root, key), trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def disk_free(root: Path) -> int:
    return shutil.disk_usage(root).free


# -- the cache -----------------------------------------------------------------------------
