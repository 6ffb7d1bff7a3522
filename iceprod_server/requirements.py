"""A task's resource requirements, as the server stores and matches them.

IceProd 2 configs may write a requirement as an expression: ``"$steering(cpus)"``,
``"$eval($steering(mem)*2)"``, or a number as a string (``"2.5"``). Expressions are
evaluated when the dataset is submitted (or its config updated), from the config's own
steering parameters. An expression that needs what only a job knows (``$(job)``,
``$(dataset)``, ``$args(...)``...) cannot be evaluated then, and the config is refused
(-32602) with a problem naming the expression; a requirement never silently becomes the
default.

``os`` may be one platform or a list of them; a task fits a pilot whose platform is any of
them. The ``req_os`` column holds one name as it is, and several as ``",A,B,"`` so that one
``LIKE`` finds a name among them.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable
from typing import Any

REQUIREMENT_DEFAULTS: dict[str, Any] = {
    "cpu": 1, "gpu": 0, "memory": 1.0, "disk": 1.0, "time": 1.0, "os": None,
}
NUMERIC = ("cpu", "gpu", "memory", "disk", "time")
# beyond any machine (and within the columns): cores, GPUs, GB, GB, hours
REQUIREMENT_MAX: dict[str, float] = {
    "cpu": 100_000, "gpu": 10_000, "memory": 1e9, "disk": 1e9, "time": 1e6,
}
# how much of an expression a problem quotes
_QUOTE_MAX = 120
# the req_os column's width
OS_COLUMN_MAX = 64

_STEERING = re.compile(r"\$steering\(([^()$]*)\)")
_JOB_VALUE = re.compile(r"\$\((\w*)\)")
_OTHER_FUNCTION = re.compile(r"\$(?!steering\(|eval\()(\w+)\(")
_MAX_DEPTH = 20

_OPERATORS: dict[type, Callable[..., Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos,
}


class RequirementError(ValueError):
    """A requirement that cannot be evaluated when the dataset is submitted."""


def _arithmetic(text: str) -> float:
    """The value of ``text``, numbers and + - * / // % ** and parentheses only."""
    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float) \
                and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 64:
                raise RequirementError(f"exponent too large in {text!r}")
            return _OPERATORS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.operand))
        raise RequirementError(f"$eval({text}) is not plain arithmetic")

    try:
        tree = ast.parse(text.strip(), mode="eval")
        return float(value(tree.body))
    except RequirementError:
        raise
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, TypeError,
            RecursionError, MemoryError) as e:
        raise RequirementError(f"$eval({text}) cannot be evaluated: {e}") from e


def _closing(text: str, start: int) -> int:
    """The index of the parenthesis that closes the one at ``start``."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i
    raise RequirementError(f"unbalanced parentheses in {text!r}")


def expand(text: str, steering: dict[str, Any], depth: int = 0) -> str:
    """``text`` with its ``$steering(...)`` and ``$eval(...)`` replaced by their values."""
    if depth > _MAX_DEPTH:
        raise RequirementError("expressions nested too deep, or steering parameters that "
                               "refer to each other in a loop")
    job = _JOB_VALUE.search(text)
    if job:
        raise RequirementError(f"{job.group(0)} is known only when the job is made")
    other = _OTHER_FUNCTION.search(text)
    if other:
        raise RequirementError(f"${other.group(1)}(...) is known only when the job is made")

    def steer(m: re.Match[str]) -> str:
        name = m.group(1).strip()
        if name not in steering:
            raise RequirementError(f"no steering parameter {name!r}")
        return expand(str(steering[name]), steering, depth + 1)

    text = _STEERING.sub(steer, text)
    while (start := text.find("$eval(")) >= 0:
        end = _closing(text, start + len("$eval"))
        inner = expand(text[start + len("$eval("):end], steering, depth + 1)
        result = _arithmetic(inner)
        shown = str(int(result)) if result.is_integer() else repr(result)
        text = text[:start] + shown + text[end + 1:]
    return text


def evaluate(value: Any, steering: dict[str, Any]) -> float | None:
    """A requirement's number: None when not given; RequirementError when it cannot be
    evaluated now or is not a finite number of at least 0."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        expanded = expand(value, steering).strip()
        try:
            value = float(expanded)
        except ValueError:
            raise RequirementError(f"{expanded!r} is not a number") from None
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise RequirementError(f"{value!r} is not a number of at least 0")
    return float(value)


def os_list(value: Any) -> list[str]:
    """The platforms of an ``os`` requirement (empty: any platform)."""
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str) and v]
    return []


def os_column(value: Any) -> str | None:
    """What the ``req_os`` column holds for an ``os`` requirement."""
    names = os_list(value)
    if not names:
        return None
    return names[0] if len(names) == 1 else "," + ",".join(names) + ","


def os_from_column(value: str | None) -> str | list[str] | None:
    """The ``os`` requirement a ``req_os`` column value stands for (one name or a list)."""
    if value and value.startswith(",") and value.endswith(","):
        return [name for name in value[1:-1].split(",") if name]
    return value or None


def task_requirements(task: dict[str, Any], steering: dict[str, Any] | None = None
                      ) -> dict[str, Any]:
    """A task's requirements with defaults: cpu and gpu integers, memory and disk in GB,
    time in hours, os one name, a list of names, or None. Raises RequirementError naming
    the requirement that cannot be evaluated."""
    given = task.get("requirements") or {}
    if not isinstance(given, dict):
        given = {}
    out: dict[str, Any] = {}
    for key in NUMERIC:
        try:
            value = evaluate(given.get(key), steering or {})
            if value is not None and value > REQUIREMENT_MAX[key]:
                raise RequirementError(f"more than {REQUIREMENT_MAX[key]:g}")
        except RequirementError as e:
            quoted = repr(given.get(key))
            if len(quoted) > _QUOTE_MAX:
                quoted = quoted[:_QUOTE_MAX] + "..."
            detail = str(e)[:2 * _QUOTE_MAX]
            raise RequirementError(f"requirements.{key} {quoted}: {detail}") from None
        if value is None:
            out[key] = REQUIREMENT_DEFAULTS[key]
        else:
            out[key] = int(math.ceil(value)) if key in ("cpu", "gpu") else value
    names = os_list(given.get("os"))
    out["os"] = None if not names else names[0] if len(names) == 1 else names
    return out


def steering_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """``steering.parameters`` of a config ({} when it has none)."""
    steering = config.get("steering")
    parameters = steering.get("parameters") if isinstance(steering, dict) else None
    return parameters if isinstance(parameters, dict) else {}


def requirement_problems(config: dict[str, Any]) -> list[str]:
    """For each task, the requirement that cannot be evaluated at submission, with its
    JSON path."""
    parameters = steering_parameters(config)
    problems = []
    for i, task in enumerate(config.get("tasks") or []):
        if not isinstance(task, dict):
            continue
        try:
            task_requirements(task, parameters)
        except RequirementError as e:
            problems.append(f"$.tasks[{i}].{e}")
        column = os_column((task.get("requirements") or {}).get("os")
                           if isinstance(task.get("requirements"), dict) else None)
        if column is not None and len(column) > OS_COLUMN_MAX:
            problems.append(f"$.tasks[{i}].requirements.os: the platforms together are "
                            f"longer than {OS_COLUMN_MAX - 2} characters")
    return problems
