"""What every command shares: the program name, exit codes, the user-error type, tables."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

PROG = "iceprod-server"
EXIT_ERROR, EXIT_USAGE, EXIT_EXISTS = 1, 2, 3


class CLIError(Exception):
    """A user error: printed as one line, no traceback."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table: numbers right-aligned, text left-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    numeric = [all(isinstance(r[i], int | float) for r in rows) and bool(rows)
               for i in range(len(headers))]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [c.rjust(w) if num else c.ljust(w)
                 for c, w, num in zip(row, widths, numeric, strict=True)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def when(t: float | None) -> str:
    """An epoch time as local ``YYYY-MM-DD HH:MM``; empty for None."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else ""
