"""The dataset config: validation against the packaged JSON Schema, and what the server
reads from a valid config (task requirements and dependencies).

The schema (``schema/dataset_config.schema.json``) checks the structure; :func:`validate`
adds what a schema cannot say (unique task names, dependencies only on earlier tasks,
requirement expressions that can be evaluated: :mod:`iceprod_server.requirements`) and
returns every problem as a message that starts with its JSON path.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jsonschema

from iceprod_server.requirements import (
    REQUIREMENT_DEFAULTS,
    requirement_problems,
    steering_parameters,
    task_requirements,
)

__all__ = ["REQUIREMENT_DEFAULTS", "steering_parameters", "task_requirements"]

SCHEMA_FILE = "dataset_config.schema.json"
# a config with thousands of mistakes needs only the first few to be fixed
MAX_PROBLEMS = 50
_MAX_MESSAGE = 300

# "<dataset id or number>.<task name>": a task of another dataset
_EXTERNAL_RE = re.compile(r"^([0-9A-Za-z]+)\.(.+)$")


@functools.cache
def schema() -> dict[str, Any]:
    """The JSON Schema shipped with the package."""
    text = resources.files("iceprod_server").joinpath("schema", SCHEMA_FILE).read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@functools.cache
def _validator() -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(schema())
    cls.check_schema(schema())
    validator: jsonschema.protocols.Validator = cls(schema())
    return validator


def parse(config: Any) -> Any:
    """A config given as JSON text (as some IceProd 2 clients send it) becomes its value;
    anything else is returned as it is. Raises ValueError for text that is not JSON."""
    if isinstance(config, str | bytes):
        try:
            return json.loads(config)
        except ValueError as e:
            raise ValueError(f"config is not valid JSON: {e}") from e
    return config


def validate(config: Any) -> list[str]:
    """Every problem with ``config``, each message starting with its JSON path; an empty
    list means the config is valid."""
    errors = sorted(_validator().iter_errors(config), key=_path_key)
    problems = [_format(e) for e in errors]
    if isinstance(config, dict) and isinstance(config.get("tasks"), list):
        problems.extend(_task_problems(config["tasks"]))
    if not problems:  # expressions are evaluated only in a config of the right shape
        problems.extend(requirement_problems(config))
    if len(problems) > MAX_PROBLEMS:
        extra = len(problems) - MAX_PROBLEMS
        problems = problems[:MAX_PROBLEMS] + [f"... and {extra} more problems"]
    return problems


def _path_key(error: jsonschema.ValidationError) -> list[tuple[int, int, str]]:
    return [(0, p, "") if isinstance(p, int) else (1, 0, str(p)) for p in error.absolute_path]


def _format(error: jsonschema.ValidationError) -> str:
    message = error.message
    if len(message) > _MAX_MESSAGE:
        message = message[:_MAX_MESSAGE] + "..."
    return f"{error.json_path}: {message}"


def _task_problems(tasks: list[Any]) -> list[str]:
    """Duplicate names and dependencies that are not on an earlier task."""
    problems: list[str] = []
    first_index: dict[str, int] = {}
    for i, task in enumerate(tasks):
        name = task.get("name") if isinstance(task, dict) else None
        if not isinstance(name, str):
            continue
        if name in first_index:
            problems.append(f"$.tasks[{i}].name: duplicate task name {name!r} "
                            f"(also $.tasks[{first_index[name]}])")
        else:
            first_index[name] = i
    for i, task in enumerate(tasks):
        if not isinstance(task, dict) or not isinstance(task.get("depends"), list):
            continue
        for k, dep in enumerate(task["depends"]):
            problem = _dependency_problem(dep, i, first_index, len(tasks))
            if problem:
                problems.append(f"$.tasks[{i}].depends[{k}]: {problem}")
    return problems


def _dependency_problem(dep: Any, index: int, names: dict[str, int], ntasks: int) -> str:
    target = _local_target(dep, names, ntasks)
    if target is None:
        if isinstance(dep, str) and _EXTERNAL_RE.match(dep):
            return ""  # another dataset's task: checked against the database at submission
        if dep != "" and isinstance(dep, str | int) and not isinstance(dep, bool):
            return f"unknown task {dep!r}"
        return ""  # wrong type or empty: the schema already says so
    if target == index:
        return f"task depends on itself ({dep!r})"
    if target > index:
        return f"{dep!r} is a later task (tasks[{target}]); a task may depend only on " \
               "earlier tasks"
    return ""


def _local_target(dep: Any, names: dict[str, int], ntasks: int) -> int | None:
    """The index of the task of this dataset that ``dep`` names (by name, by index, or by
    an index written as a string, as some IceProd 2 configs do), or None."""
    if isinstance(dep, bool):
        return None
    if isinstance(dep, int):
        return dep if 0 <= dep < ntasks else None
    if not isinstance(dep, str):
        return None
    if dep in names:
        return names[dep]
    if dep.isdigit() and int(dep) < ntasks:
        return int(dep)
    return None


@dataclass(frozen=True)
class ExternalDependency:
    """A task of another dataset: ``dataset`` is its id (or its number), ``task`` its name."""

    dataset: str
    task: str


def task_dependencies(config: dict[str, Any]) -> list[list[int | ExternalDependency]]:
    """For each task of a valid config, the tasks it depends on: an index in this dataset,
    or an :class:`ExternalDependency`."""
    tasks = config["tasks"]
    names = {t["name"]: i for i, t in enumerate(tasks)}
    result: list[list[int | ExternalDependency]] = []
    for task in tasks:
        deps: list[int | ExternalDependency] = []
        for dep in task.get("depends") or []:
            target = _local_target(dep, names, len(tasks))
            if target is not None:
                if target not in deps:
                    deps.append(target)
                continue
            match = _EXTERNAL_RE.match(str(dep))
            if match is None:
                raise ValueError(f"task {task['name']!r}: unknown dependency {dep!r}")
            ext = ExternalDependency(match.group(1), match.group(2))
            if ext not in deps:
                deps.append(ext)
        result.append(deps)
    return result
