"""Dataset configs as IceProd 2.3 writes them: version 3 with the keys its own tools add
(``dataset``, ``parent_id``, ``categories``, ``difplus``; ``classes``, ``projects``,
``resources`` and ``task_files`` in tasks and trays) and ``null`` where a section is
empty."""

from __future__ import annotations

from typing import Any


def iceprod2_module(name: str = "run") -> dict[str, Any]:
    return {"name": name, "running_class": None, "src": "python3", "args": "-c pass",
            "env_shell": None, "env_clear": True, "configs": {}, "classes": [],
            "projects": [], "resources": [], "data": [], "parameters": {}}


def iceprod2_task(name: str, depends: list[Any] | None = None,
                  requirements: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "depends": depends or [], "batchsys": None,
            "requirements": requirements or {}, "task_files": False, "data": [],
            "parameters": {}, "classes": [], "projects": [], "resources": [],
            "trays": [{"name": "main", "iterations": 1, "classes": [], "projects": [],
                       "resources": [], "data": [], "parameters": {},
                       "modules": [iceprod2_module()]}]}


def iceprod2_config(*tasks: dict[str, Any], steering: Any = "default",
                    description: str = "IceProd 2 dataset") -> dict[str, Any]:
    if steering == "default":
        steering = {"parameters": {"energy": "1 TeV", "nevents": 100}, "batchsys": None,
                    "system": {}, "resources": [], "data": []}
    return {"version": 3, "dataset": 0, "parent_id": 0, "description": description,
            "categories": [], "difplus": None, "options": {}, "steering": steering,
            "tasks": list(tasks) or [iceprod2_task("generate")]}
