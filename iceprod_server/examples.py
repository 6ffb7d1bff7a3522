"""The example dataset configs shipped with the server (``conf/examples`` in a checkout,
``iceprod_server/examples`` in an installed package).

The submit page offers them, and ``iceprod-server submit --help`` lists them with their
descriptions. Reading them is blocking file work: the server calls
these functions on its ``fs`` pool.
"""

from __future__ import annotations

import json
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
# examples inside an installed package first, then the repository checkout's conf/examples
EXAMPLE_DIRS = (PACKAGE / "examples", PACKAGE.parent / "conf" / "examples")
EXAMPLE_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\.json"


def examples_dir() -> Path | None:
    for folder in EXAMPLE_DIRS:
        if folder.is_dir():
            return folder
    return None


def list_examples() -> list[str]:
    folder = examples_dir()
    if folder is None:
        return []
    return sorted(p.name for p in folder.glob("*.json") if p.is_file())


def read_example(name: str) -> str | None:
    """The text of example ``name``; None if there is no such example."""
    if name not in list_examples():
        return None
    folder = examples_dir()
    return (folder / name).read_text("utf-8") if folder else None


def summary(name: str, width: int = 90) -> str:
    """The example's description on one line, cut to ``width`` characters ("" if it has
    none or is not JSON)."""
    text = read_example(name)
    try:
        description = json.loads(text).get("description") if text else None
    except (ValueError, AttributeError):
        return ""
    if not isinstance(description, str):
        return ""
    line = " ".join(description.split())
    return line if len(line) <= width else line[:width - 3].rstrip() + "..."
