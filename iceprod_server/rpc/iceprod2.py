"""IceProd 2.3.2's method names: how its clients called this server's methods, and the
2.3.2 methods that have no counterpart of the same name (actions and accounts here; the
``public_*`` reads in :mod:`iceprod_server.rpc.iceprod2_reads`).

IceProd 2.3.2's client library sends named params, with the positional ones as a list
under ``args``; :func:`~iceprod_server.rpc.registry.bind` binds that list in 2.3.2's order
of each method's params, which :data:`FORMS` declares where it differs from this server's
order, or where 2.3.2 used params this server refuses. Roles, ownership of datasets and
``public_read`` apply as to every method: each 2.3.2 name has the roles of what it maps to
(2.3.2 let any passkey call any method that was not ``public_*``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Literal

from iceprod_server.db import bulk, iceprod2_accounts
from iceprod_server.errors import (
    CONFLICT,
    FORBIDDEN,
    INVALID_PARAMS,
    NOT_AUTHENTICATED,
    NOT_FOUND,
    UNAVAILABLE,
    InvalidParams,
)
from iceprod_server.rpc import human
from iceprod_server.rpc.context import Context
from iceprod_server.rpc.registry import (
    ADMIN,
    ICEPROD2,
    NOT_SERVED,
    USER,
    Iceprod2Form,
    Id,
    MethodFunc,
    rpc_method,
)

ERRORS = (INVALID_PARAMS, NOT_AUTHENTICATED, FORBIDDEN, NOT_FOUND, CONFLICT, UNAVAILABLE)

SQL_REFUSED = ("this server never runs SQL sent over the wire, so IceProd 2.3.2's SQL-text "
               "site sync is not served; sites speak the structured site protocol")

# this server's methods that IceProd 2.3.2 had under the same name: its params in its
# positional order, and what the call does here when that is not the same thing
FORMS: dict[str, Iceprod2Form] = {
    "echo": Iceprod2Form(("value",)),
    "new_task": Iceprod2Form(("gridspec",)),
    "set_processing": Iceprod2Form(("task_id",)),
    "stillrunning": Iceprod2Form(("task_id",)),
    "finish_task": Iceprod2Form(("task_id", "stats")),
    "task_error": Iceprod2Form(("task_id", "error_info")),
    "upload_logfile": Iceprod2Form(("task", "name", "data")),
    "update_pilot": Iceprod2Form(("pilot_id",)),
    "submit_dataset": Iceprod2Form(
        ("config", "difplus", "description", "gridspec", "njobs", "stat_keys", "debug")),
    "update_dataset_config": Iceprod2Form(("dataset_id", "config", "description"),
                                          "answers null to IceProd 2 callers"),
    "reset_dataset": Iceprod2Form(("dataset_id",)),
    "hard_reset_dataset": Iceprod2Form(("dataset_id",)),
    "suspend_dataset": Iceprod2Form(("dataset_id",)),
    "truncate_dataset": Iceprod2Form(("dataset_id",)),
    "reset_jobs": Iceprod2Form(("job_ids",)),
    "hard_reset_jobs": Iceprod2Form(("job_ids",)),
    "suspend_jobs": Iceprod2Form(("job_ids",)),
    "public_get_number_of_tasks_in_each_state": Iceprod2Form(("dataset_id",)),
    "public_get_datasets_by_status": Iceprod2Form(
        ("status",), "with status: [dataset_id, ...] of that status"),
    "public_get_task_stats": Iceprod2Form(
        ("task_id",), "with task_id: [[stat JSON text], ...] of that task"),
    "public_get_dataset_completion": Iceprod2Form(
        ("dataset_id",), "the fraction complete, to IceProd 2 callers"),
    "queue_master": Iceprod2Form(
        ("resources", "filters", "queueing_factor_priority", "queueing_factor_dataset",
         "queueing_factor_tasks", "num"),
        "the structured site protocol (docs/federation.md)"),
    "master_update": Iceprod2Form(
        ("updates",), "the structured site protocol: master_update(changes)",
        {"updates": f"master_update(updates): {SQL_REFUSED}: master_update(changes), "
                    "docs/federation.md"}),
    "master_get_tables": Iceprod2Form(
        ("tablenames",), "the structured site protocol: master_get_tables(tables, since)",
        {"tablenames": f"master_get_tables(tablenames): {SQL_REFUSED}: "
                       "master_get_tables(tables, since), docs/federation.md"}),
}
ICEPROD2.update(FORMS)

_MODULES = ("IceProd 2.3.2's module manager: this server has no modules to {verb}. It is one "
            "program: `iceprod-server serve` starts it, SIGTERM stops it gracefully, and "
            "SIGHUP applies changed options of iceprod.toml (docs/cli.md)")
NOT_SERVED.update({
    "start_module": (("module_name",), "start_module is " + _MODULES.format(verb="start")),
    "stop_module": (("module_name",), "stop_module is " + _MODULES.format(verb="stop")),
    "update_config": (("config_text",),
                      "update_config is IceProd 2.3.2's config editor: this server takes no "
                      "configuration over JSON-RPC. Its options are in iceprod.toml in the "
                      "data directory (and ICEPROD_* variables); after editing, SIGHUP "
                      "applies the live ones, a restart the rest (docs/cli.md, "
                      "conf/iceprod.example.toml)"),
})


def iceprod2(maps_to: str) -> Callable[[MethodFunc], MethodFunc]:
    """Mark a method registered under an IceProd 2.3.2 name that this server did not have:
    its own params are 2.3.2's, in 2.3.2's order."""
    def mark(func: MethodFunc) -> MethodFunc:
        params = tuple(inspect.signature(func).parameters)[1:]  # after the context
        ICEPROD2[func.__name__] = Iceprod2Form(params, maps_to)
        return func
    return mark


def _task_ids(tasks: str | list[str]) -> list[str]:
    return [tasks] if isinstance(tasks, str) else list(tasks)


# --- actions ----------------------------------------------------------------------------

@iceprod2("reset_tasks(task_ids)")
@rpc_method(USER, ADMIN, errors=ERRORS)
async def reset_task(ctx: Context, tasks: Id | list[Id]) -> None:
    """IceProd 2.3.2's reset of a task id or a list: as reset_tasks (failure counts
    cleared). Answers null."""
    await ctx.services.db.write(bulk.reset_tasks, human.actor(ctx), _task_ids(tasks))
    ctx.services.wake_scheduler()


@iceprod2("resume_tasks(task_ids)")
@rpc_method(USER, ADMIN, errors=ERRORS)
async def resume_task(ctx: Context, tasks: Id | list[Id]) -> None:
    """IceProd 2.3.2's resume of a task id or a list: as resume_tasks (their jobs and
    datasets processing again). Answers null."""
    await ctx.services.db.write(bulk.resume_tasks, human.actor(ctx), _task_ids(tasks))
    ctx.services.wake_scheduler()


@iceprod2("suspend_tasks(task_ids)")
@rpc_method(USER, ADMIN, errors=ERRORS)
async def suspend_task(ctx: Context, tasks: Id | list[Id]) -> None:
    """IceProd 2.3.2's suspension of a task id or a list: as suspend_tasks. Answers
    null."""
    await ctx.services.db.write(bulk.suspend_tasks, human.actor(ctx), _task_ids(tasks))


_STATUS_ACTIONS = {"processing": human.resume_dataset, "suspended": human.suspend_dataset,
                   "truncated": human.truncate_dataset}


@iceprod2("resume_dataset, suspend_dataset or truncate_dataset")
@rpc_method(USER, ADMIN, errors=ERRORS)
async def set_dataset_status(ctx: Context, dataset_id: Id,
                             status: Literal["processing", "suspended", "truncated"]
                             ) -> dict[str, Any]:
    """IceProd 2.3.2's status change, as the action it means here: processing is
    resume_dataset, suspended suspend_dataset, truncated truncate_dataset (complete and
    errors follow from the tasks). Answers as those: ``{dataset_id, status, tasks}``."""
    result: dict[str, Any] = await _STATUS_ACTIONS[status](ctx, dataset_id)
    return result


# --- accounts ---------------------------------------------------------------------------

@iceprod2("list_groups")
@rpc_method(ADMIN, errors=(NOT_AUTHENTICATED, FORBIDDEN, UNAVAILABLE))
async def get_groups(ctx: Context) -> dict[str, dict[str, Any]]:
    """Every group as IceProd 2.3.2 listed them: ``{groups_id: {groups_id, name,
    description, priority}}``."""
    return await ctx.services.db.read(iceprod2_accounts.get_groups)


@iceprod2("create_group, set_group_priority")
@rpc_method(ADMIN, errors=ERRORS)
async def set_groups(ctx: Context, user: Id | None = None,
                     groups: dict[str, Any] | None = None) -> None:
    """Make the groups exactly ``groups`` (``{groups_id: {name, description, priority}}``):
    groups not named are deleted, named ones updated, new ids added (with ids of their
    own). A group datasets use cannot be deleted (-32004, nothing changes). ``user`` is
    accepted and not used: the caller's credentials decide. Answers null."""
    if groups is None:
        raise InvalidParams("groups: missing", {"problems": ["groups: missing"]})
    await ctx.services.db.write(iceprod2_accounts.set_groups, human.actor(ctx), groups)


@iceprod2("list_users")
@rpc_method(ADMIN, errors=(NOT_AUTHENTICATED, FORBIDDEN, NOT_FOUND, UNAVAILABLE))
async def get_user_roles(ctx: Context, username: str) -> dict[str, dict[str, str]]:
    """The user's roles: ``{role: {roles_id, role_name}}`` with this server's role of the
    user (user or admin), ``{}`` for a disabled user; -32003 for an unknown name."""
    return await ctx.services.db.read(iceprod2_accounts.user_roles, username)


@iceprod2("set_user_role, disable_user")
@rpc_method(ADMIN, errors=ERRORS)
async def set_user_roles(ctx: Context, user: Id | None = None, username: str | None = None,
                         roles: list[str] | str | None = None) -> None:
    """Set a user's roles (a list, or IceProd 2.3.2's comma-separated text): none disables
    the user; user or admin (both: admin) enables them with that role. ``user`` is accepted
    and not used. Answers null."""
    if username is None or roles is None:
        missing = [n for n, v in (("username", username), ("roles", roles)) if v is None]
        problems = [f"{n}: missing" for n in missing]
        raise InvalidParams("; ".join(problems), {"problems": problems})
    names = [r.strip() for r in roles.split(",") if r.strip()] if isinstance(roles, str) \
        else roles
    await ctx.services.db.write(iceprod2_accounts.set_user_roles, human.actor(ctx),
                                username, names)
