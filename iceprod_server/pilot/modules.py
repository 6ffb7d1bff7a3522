"""How the pilot turns a task's config into processes and files.

A module's ``src`` and ``args`` become a command line (:func:`module_command`), run in the
task's scratch directory with the environment of :func:`module_env`. The task's ``data``
entries with a ``file://`` URL, a plain path or an ``http(s)://`` URL are copied in before
the first module (``movement`` input or both) and out after the last (output or both).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

# IceProd expressions the pilot itself can fill in: ``$(name)`` and ``$steering(name)``;
# others (``$eval(...)``, ``$sprintf(...)``) are left as written
_EXPR = re.compile(r"\$(\(|steering\()([\w:.\-]+)\)")
# a parameter may name another; this bounds the chain (and a loop)
_MAX_DEPTH = 10
MINIMAL_PATH = "/usr/local/bin:/usr/bin:/bin"
DOWNLOAD_TIMEOUT = 300.0


class StagingError(Exception):
    """A data entry could not be copied in or out."""


def substitute(text: str, values: dict[str, Any]) -> str:
    """Replace ``$(job)``, ``$(dataset)``, ``$(jobs_submitted)``, ``$(iter)``, a parameter's
    ``$(name)`` or ``$steering(name)`` ... in text. A parameter's value may use expressions
    too; names not in ``values`` are left as written."""
    def repl(m: re.Match[str]) -> str:
        return str(values[m.group(2)]) if m.group(2) in values else m.group(0)

    for _ in range(_MAX_DEPTH):
        replaced = _EXPR.sub(repl, text)
        if replaced == text:
            break
        text = replaced
    return text


def parameters(config: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    """The named values a task's expressions may use: the steering parameters, overridden
    by the task's own ``parameters``."""
    found: dict[str, Any] = {}
    for params in ((config.get("steering") or {}).get("parameters"), task.get("parameters")):
        if isinstance(params, dict):
            found.update(params)
    return found


def module_args(args: Any, values: dict[str, Any]) -> list[str]:
    """A module's ``args`` as argv: a list as it is, a string split like a shell would,
    an object as ``--key=value`` options (values that are not strings as JSON)."""
    def text(v: Any) -> str:
        return substitute(v if isinstance(v, str) else json.dumps(v), values)

    if args is None or args == "":
        return []
    if isinstance(args, str):
        return shlex.split(substitute(args, values))
    if isinstance(args, list):
        return [text(a) for a in args]
    if isinstance(args, dict):
        return [f"--{key}={text(value)}" for key, value in args.items()]
    raise ValueError(f"args must be a list, a string or an object, not {type(args).__name__}")


def module_command(module: dict[str, Any], values: dict[str, Any]) -> list[str] | None:
    """The command line of a module, or None when it has no ``src`` (IceProd 2 modules
    that name a ``running_class`` instead).

    A ``.py`` file runs with the pilot's Python, a ``.sh`` file with ``/bin/sh``; anything
    else is a command (split like a shell would). ``env_shell`` is put in front, as
    IceProd does.
    """
    src = substitute(str(module.get("src") or ""), values).strip()
    if not src:
        return None
    single = not any(c.isspace() for c in src)
    if single and src.endswith(".py"):
        cmd = [sys.executable, src]
    elif single and src.endswith(".sh"):
        cmd = ["/bin/sh", src]
    else:
        cmd = shlex.split(src)
    shell = substitute(str(module.get("env_shell") or ""), values).strip()
    if shell:
        cmd = shlex.split(shell) + cmd
    return cmd + module_args(module.get("args"), values)


def module_env(module: dict[str, Any], values: dict[str, Any], scratch: Path) -> dict[str, str]:
    """The pilot's environment, or with ``env_clear`` a minimal one; plus ICEPROD_* facts."""
    if module.get("env_clear"):
        env = {"PATH": MINIMAL_PATH, "HOME": str(scratch), "TMPDIR": str(scratch),
               "LANG": "C.UTF-8"}
    else:
        env = dict(os.environ)
    env.pop("ICEPROD_PASSKEY", None)  # the pilot's credential is not the task's business
    env.update({"ICEPROD_TASK_ID": str(values["task_id"]), "ICEPROD_JOB": str(values["job"]),
                "ICEPROD_DATASET": str(values["dataset"]),
                "ICEPROD_JOBS_SUBMITTED": str(values["jobs_submitted"]),
                "ICEPROD_SCRATCH": str(scratch), "PYTHONUNBUFFERED": "1"})
    return env


def data_entries(task: dict[str, Any]) -> list[dict[str, Any]]:
    """The data entries of a task, its trays and their modules."""
    found = [d for d in task.get("data") or [] if isinstance(d, dict)]
    for tray in task.get("trays") or []:
        found += [d for d in tray.get("data") or [] if isinstance(d, dict)]
        for module in tray.get("modules") or []:
            found += [d for d in module.get("data") or [] if isinstance(d, dict)]
    return found


def _local_path(entry: dict[str, Any], remote: str, values: dict[str, Any],
                scratch: Path) -> Path:
    local = substitute(str(entry.get("local") or ""), values) or \
        os.path.basename(urlsplit(remote).path)
    path = (scratch / local).resolve()
    if not path.is_relative_to(scratch.resolve()):
        raise StagingError(f"local name {local!r} points outside the scratch directory")
    return path


def _file_path(remote: str) -> Path | None:
    """The filesystem path of a ``file://`` URL or a plain absolute path."""
    if remote.startswith("file://"):
        return Path(unquote(urlsplit(remote).path))
    if remote.startswith("/"):
        return Path(remote)
    return None


def stage_in(entry: dict[str, Any], values: dict[str, Any], scratch: Path) -> str | None:
    """Copy an input into the scratch directory; returns what was done, None if nothing."""
    if entry.get("movement") not in ("input", "both"):
        return None
    remote = substitute(str(entry.get("remote") or ""), values)
    if not remote:
        return None
    dest = _local_path(entry, remote, values, scratch)
    dest.parent.mkdir(parents=True, exist_ok=True)
    path = _file_path(remote)
    try:
        if path is not None:
            shutil.copyfile(path, dest)
        elif remote.startswith(("http://", "https://")):
            with urllib.request.urlopen(remote, timeout=DOWNLOAD_TIMEOUT) as r, \
                    dest.open("wb") as f:  # noqa: S310 (scheme checked above)
                shutil.copyfileobj(r, f)
        else:
            raise StagingError(f"input {remote}: this pilot reads only file:// and http(s)://")
    except OSError as e:
        raise StagingError(f"input {remote} could not be read: {e}") from e
    return f"input {remote} -> {dest.name}"


def stage_out(entry: dict[str, Any], values: dict[str, Any], scratch: Path) -> str | None:
    """Copy an output to its ``file://`` destination, atomically (temporary name, then
    rename); returns what was done, None if nothing."""
    if entry.get("movement") not in ("output", "both"):
        return None
    remote = substitute(str(entry.get("remote") or ""), values)
    if not remote:
        return None
    src = _local_path(entry, remote, values, scratch)
    path = _file_path(remote)
    if path is None:
        raise StagingError(f"output {remote}: this pilot writes only to file:// paths")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "wb") as f, src.open("rb") as inp:
            shutil.copyfileobj(inp, f)
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise StagingError(f"output {src.name} could not be written to {remote}: {e}") from e
    return f"output {src.name} -> {remote}"
