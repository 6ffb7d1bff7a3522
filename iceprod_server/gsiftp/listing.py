"""Parsing what GridFTP servers say: MLSD/MLST fact lines, and error replies.

Both backends read the same server answers (the library hands them over as text, the
subprocess backend reads them from its own control connection), so they parse them here.
"""

from __future__ import annotations

import calendar
import re
import time

from iceprod_server.gsiftp.base import Entry
from iceprod_server.gsiftp.errors import (
    ConnectionError,
    GridFTPError,
    NotFoundError,
    PermissionDeniedError,
)

_TYPES = {"file": "file", "dir": "dir", "cdir": "cdir", "pdir": "pdir",
          "os.unix=symlink": "link", "os.unix=slink": "link"}


def parse_facts(line: str) -> Entry | None:
    """One MLSD/MLST line, ``Type=file;Size=12;Modify=20240101120000;UNIX.mode=0644; name``,
    as an :class:`Entry`; None for ``.`` and ``..`` (cdir, pdir) and blank lines."""
    line = line.rstrip("\r\n")
    if not line.strip():
        return None
    facts_text, sep, name = line.partition(" ")
    if not sep:
        raise ValueError(f"not an MLSx fact line: {line!r}")
    facts: dict[str, str] = {}
    for fact in facts_text.split(";"):
        key, eq, value = fact.partition("=")
        if eq:
            facts[key.lower()] = value
    kind = _TYPES.get(facts.get("type", "").lower(), "other")
    if kind in ("cdir", "pdir") or name in (".", ".."):
        return None
    name = name.rsplit("/", 1)[-1] if "/" in name.rstrip("/") else name.rstrip("/")
    mode = facts.get("unix.mode", "")
    permissions = f"{int(mode, 8):04o}" if re.fullmatch(r"[0-7]{1,6}", mode) else ""
    return Entry(name=name, size=int(facts.get("size", "0") or 0), type=kind,
                 permissions=permissions, modified=parse_modify(facts.get("modify", "")))


def parse_modify(value: str) -> float | None:
    """An MLSx ``Modify`` / MDTM time, ``YYYYMMDDHHMMSS[.sss]`` in UTC, as epoch seconds."""
    match = re.fullmatch(r"(\d{14})(\.\d+)?", value.strip())
    if not match:
        return None
    whole = calendar.timegm(time.strptime(match.group(1), "%Y%m%d%H%M%S"))
    return whole + float(match.group(2) or 0)


def parse_listing(text: str) -> list[Entry]:
    """A whole MLSD answer, sorted by name."""
    entries = [e for e in (parse_facts(line) for line in text.splitlines()) if e is not None]
    return sorted(entries, key=lambda e: e.name)


_NOT_FOUND = re.compile(r"no such file|not found|does not exist|file unavailable|"
                        r"\b450\b|no such directory", re.IGNORECASE)
_DENIED = re.compile(r"permission denied|not permitted|\b530\b|\b533\b|\b535\b|"
                     r"authenticat|authoriz|access denied|login incorrect|credential",
                     re.IGNORECASE)
_CONNECTION = re.compile(r"connection refused|could not connect|connection reset|"
                         r"broken pipe|host unreachable|name or service not known|"
                         r"\b421\b|\beof\b|end-of-file|connection closed|unable to connect",
                         re.IGNORECASE)


def classify(url: str, message: str) -> GridFTPError:
    """The typed error for a failure message from the server, the library or a program.

    Permission problems are checked before "not found", since servers often say 550 for
    both and only the text tells them apart."""
    message = " ".join(message.split())
    if _DENIED.search(message):
        return PermissionDeniedError(url, message)
    if _NOT_FOUND.search(message):
        return NotFoundError(url, message)
    if _CONNECTION.search(message):
        return ConnectionError(url, message)
    return GridFTPError(url, message)
