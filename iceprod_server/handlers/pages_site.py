"""Placeholder: routes are added as the pages are built."""

from __future__ import annotations

from typing import Any


def routes() -> list[Any]:
    return []
