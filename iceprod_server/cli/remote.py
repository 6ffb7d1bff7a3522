"""Commands that talk to a running server over JSON-RPC: ``submit`` and ``status``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from iceprod_server.cli.common import EXIT_USAGE, CLIError, table
from iceprod_server.client import IceProdClient, RPCError
from iceprod_server.states import TASK_STATES_SHOWN


def _client(args: argparse.Namespace) -> IceProdClient:
    try:
        return IceProdClient(args.url, passkey=args.passkey or None, timeout=args.timeout,
                             retries=2)
    except ValueError as e:
        raise CLIError(str(e), EXIT_USAGE) from e


def _rpc_error(e: RPCError) -> CLIError:
    return CLIError(str(e))


def cmd_submit(args: argparse.Namespace) -> None:
    path = Path(args.config)
    try:
        config = json.loads(path.read_text())
    except OSError as e:
        raise CLIError(f"cannot read {path}: {e.strerror}") from e
    except json.JSONDecodeError as e:
        raise CLIError(f"{path} is not valid JSON: {e}") from e
    if args.njobs < 1:
        raise CLIError("--njobs must be at least 1", EXIT_USAGE)
    description = args.description
    if description is None:
        description = (config.get("description") if isinstance(config, dict) else "") or ""
    params: dict[str, Any] = {"config": config, "description": description,
                              "njobs": args.njobs, "debug": args.debug,
                              "priority": args.priority}
    if args.group:
        params["group"] = args.group
    if args.gridspec:
        params["gridspec"] = args.gridspec
    if args.stat_key:
        params["stat_keys"] = args.stat_key
    # the client gives the submission a request_key: repeated after a lost answer or
    # -32006, it still makes one dataset
    client = _client(args)
    try:
        dataset_id = client.call("submit_dataset", **params)
    except RPCError as e:
        problems = e.data.get("problems") if isinstance(e.data, dict) else None
        if e.code == -32602 and problems:
            print(f"{path}: {e.reason}", file=sys.stderr)
            for p in problems:
                print(f"  {_problem(p)}", file=sys.stderr)
            raise CLIError(f"dataset not submitted ({len(problems)} problems)") from e
        raise _rpc_error(e) from e
    print(dataset_id)


def _problem(p: Any) -> str:
    if isinstance(p, dict):
        where = p.get("path") or p.get("where") or ""
        msg = p.get("message") or p.get("reason") or json.dumps(p)
        return f"{where}: {msg}" if where else str(msg)
    return str(p)


def cmd_status(args: argparse.Namespace) -> None:
    client = _client(args)
    if getattr(args, "watch", None) is not None:
        # rich is needed only here: every other command starts without importing it
        from iceprod_server.cli import watch

        watch.cmd_watch(args, client)
        return
    try:
        if args.dataset:
            _dataset_status(client, args.dataset)
        else:
            _all_status(client)
    except RPCError as e:
        raise _rpc_error(e) from e


def _all_status(client: IceProdClient) -> None:
    datasets: list[dict[str, Any]] = []
    after = None
    while True:
        page = client.call("public_get_datasets", limit=1000, after=after)
        datasets += page.get("items", [])
        after = page.get("next")
        if not after:
            break
    if not datasets:
        print("no datasets")
        return
    rows = []
    for d in sorted(datasets, key=lambda d: d.get("dataset_num") or 0):
        counts = client.call("public_get_number_of_tasks_in_each_state",
                             dataset_id=d["dataset_id"])
        rows.append([d["dataset_id"], d.get("dataset_num", ""), d.get("status", ""),
                     _clip(d.get("description", ""), 40),
                     *(counts.get(s, 0) for s in TASK_STATES_SHOWN)])
    print(table(["dataset id", "number", "status", "description", *TASK_STATES_SHOWN], rows))


def _dataset_status(client: IceProdClient, dataset_id: str) -> None:
    counts = client.call("public_get_number_of_tasks_in_each_state", dataset_id=dataset_id)
    by_name = client.call("public_get_number_of_tasks_by_name", dataset_id=dataset_id)
    states = [s for s in TASK_STATES_SHOWN if counts.get(s)] or ["complete"]
    states += sorted(set(counts) - set(TASK_STATES_SHOWN))
    print(table(["status", "tasks"], [[s, counts.get(s, 0)] for s in states]
                 + [["total", sum(counts.values())]]))
    if by_name:
        print()
        names = by_name.items() if isinstance(by_name, dict) else []
        print(table(["task", *states, "total"],
                     [[name, *(c.get(s, 0) for s in states), sum(c.values())]
                      for name, c in names]))


def _clip(text: Any, width: int) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= width else text[:width - 1] + "…"
