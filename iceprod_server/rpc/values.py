"""What a JSON value in a request may hold, whatever the method.

JSON lets a client write things that the database or the reply cannot carry: ``1e999``
(Python reads it as infinity), integers of any length, ``"\\ud800"`` (a lone UTF-16
surrogate, which UTF-8 cannot encode), and arrays nested a thousand deep (which overflow
the recursion of the JSON encoder). These checks run on every request before any method,
so such a value is refused with a JSON-RPC error instead of failing later, or being stored
and then failing every read that meets it.

- :func:`too_deep`: nesting beyond :data:`MAX_DEPTH` (the body is answered with -32700);
- :func:`problems`: non-finite numbers, integers outside 64 bits, strings that UTF-8
  cannot encode, anywhere in a parameter (the request is answered with -32602).
"""

from __future__ import annotations

import math
from typing import Any

# arrays and objects nested deeper than this are refused as a whole (-32700)
MAX_DEPTH = 100
# integers must fit a signed 64-bit column
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether arrays and objects in ``value`` nest deeper than ``limit``."""
    if not isinstance(value, dict | list):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


def _scalar_problem(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return "numbers must be finite (no NaN or infinity, e.g. 1e999)"
    elif isinstance(value, int) and not isinstance(value, bool):
        if not INT_MIN <= value <= INT_MAX:
            return "integers must fit in 64 bits"
    elif isinstance(value, str):
        if not utf8_ok(value):
            return "text must be valid Unicode (no lone surrogates)"
    return ""


def utf8_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def problems(value: Any, where: str, limit: int = 5) -> list[str]:
    """Up to ``limit`` problems in ``value``, each naming where it is (``stats.time_used``)."""
    found: list[str] = []
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack and len(found) < limit:
        item, path = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and not utf8_ok(key):
                    found.append(f"{path}: keys must be valid Unicode (no lone surrogates)")
                    continue
                stack.append((child, f"{path}.{key}"))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(item))
        else:
            problem = _scalar_problem(item)
            if problem:
                found.append(f"{path}: {problem}")
    return found


def finite_copy(value: Any) -> Any:
    """``value`` with non-finite numbers replaced by null, for replies that meet a value
    stored before these checks existed."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_copy(v) for v in value]
    return value
