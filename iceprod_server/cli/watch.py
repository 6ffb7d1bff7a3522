"""``iceprod-server status --watch DATASET``: a dataset's progress, live, in a terminal.

One progress bar per task name and one for the whole dataset, each with its complete and
total tasks, percentage, running and failed tasks, the completion rate and an estimate of
the time left (from the rate over the last minute). The counts are polled every
``--interval`` seconds until the dataset is complete (exit 0), or stops with failed or
suspended tasks and nothing running (exit 1), or Ctrl-C (exit 130; the dataset keeps
running on the server). When standard output is not a terminal only the final state is
printed.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from iceprod_server.cli.common import EXIT_USAGE, CLIError
from iceprod_server.client import CONNECTION_ERROR, TRANSPORT_ERROR, UNAVAILABLE, RPCError

# the server may restart while someone watches: keep polling through short outages
OUTAGE_LIMIT = 120.0
RUNNING = ("processing",)
PENDING = ("idle", "waiting", "queued", "reset", "resume")
STOPPED_STATES = ("errors", "suspended")


@dataclass
class State:
    dataset: dict[str, Any]
    by_name: dict[str, dict[str, int]]

    @property
    def names(self) -> list[str]:
        listed = [n for n in self.dataset.get("tasks") or [] if n in self.by_name]
        return listed + sorted(set(self.by_name) - set(listed))

    @property
    def totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for counts in self.by_name.values():
            for status, n in counts.items():
                out[status] = out.get(status, 0) + n
        return out

    def outcome(self) -> str | None:
        """"complete", "stopped", or None while there is still work going on."""
        totals = self.totals
        total = sum(totals.values())
        if self.dataset.get("status") == "complete" or (
                total and totals.get("complete", 0) == total):
            return "complete"
        running = sum(totals.get(s, 0) for s in RUNNING)
        if self.dataset.get("status") in STOPPED_STATES and not running:
            return "stopped"
        return None


def fetch(client: Any, dataset_id: str) -> State:
    dataset = client.call("public_get_dataset", dataset_id=dataset_id)
    by_name = client.call("public_get_number_of_tasks_by_name", dataset_id=dataset_id)
    return State(dataset, by_name if isinstance(by_name, dict) else {})


def detail(counts: dict[str, int]) -> str:
    parts = []
    for label, states in (("running", RUNNING), ("waiting", PENDING),
                          ("failed", ("failed",)), ("suspended", ("suspended",))):
        n = sum(counts.get(s, 0) for s in states)
        if n:
            parts.append(f"{n:,} {label}")
    return ", ".join(parts)


class RateColumn(ProgressColumn):
    """Tasks completed per second, minute or hour, over the speed estimate period."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            return Text("-", style="progress.data.speed")
        for unit, factor in (("s", 1.0), ("min", 60.0), ("h", 3600.0)):
            if speed * factor >= 1.0:
                return Text(f"{speed * factor:,.1f}/{unit}", style="progress.data.speed")
        return Text(f"{speed * 86400.0:,.1f}/day", style="progress.data.speed")


def make_progress(console: Console) -> Progress:
    return Progress(
        # task names come from the config: never read them as rich markup
        TextColumn("{task.description}", markup=False),
        BarColumn(bar_width=32),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(),
        TimeRemainingColumn(elapsed_when_finished=True),
        TextColumn("{task.fields[detail]}", style="dim", markup=False),
        console=console, speed_estimate_period=60.0, refresh_per_second=2)


class Display:
    """The bars: one per task name, then the dataset's."""

    def __init__(self, progress: Progress, state: State) -> None:
        self.progress = progress
        self.width = max([len(n) for n in state.names] + [len("dataset")])
        self.rows: dict[str, TaskID] = {}
        self.overall: TaskID | None = None
        self.update(state)

    def _set(self, row: TaskID | None, label: str, counts: dict[str, int],
             extra: str = "") -> TaskID:
        completed = counts.get("complete", 0)
        total = sum(counts.values())
        text = "; ".join(p for p in (extra, detail(counts)) if p)
        if row is None:
            return self.progress.add_task(label.ljust(self.width), total=total,
                                          completed=completed, detail=text)
        self.progress.update(row, total=total, completed=completed, detail=text)
        return row

    def update(self, state: State, note: str = "") -> None:
        for name in state.names:
            self.rows[name] = self._set(self.rows.get(name), name, state.by_name[name])
        status = f"dataset {state.dataset.get('status', '')}"
        self.overall = self._set(self.overall, "dataset", state.totals,
                                 "; ".join(p for p in (status, note) if p))


def watch(client: Any, dataset_id: str, interval: float = 1.5,
          console: Console | None = None) -> tuple[str, State]:
    """Show the dataset's progress until it is done; returns the outcome ("complete" or
    "stopped") and the last state seen. Raises KeyboardInterrupt on Ctrl-C."""
    console = console or Console(highlight=False)
    state = fetch(client, dataset_id)
    d = state.dataset
    title = Text.assemble((f"dataset {d.get('dataset_num', '')}", "bold"), f" {dataset_id}")
    if d.get("description"):
        title.append(f": {d['description']}")
    console.print(title)
    progress = make_progress(console)
    with progress:
        display = Display(progress, state)
        failing_since: float | None = None
        while (outcome := state.outcome()) is None:
            time.sleep(interval)
            try:
                state = fetch(client, dataset_id)
            except RPCError as e:
                if e.code not in (CONNECTION_ERROR, TRANSPORT_ERROR, UNAVAILABLE):
                    raise
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > OUTAGE_LIMIT:
                    raise
                display.update(state, "server unreachable, retrying")
                continue
            failing_since = None
            display.update(state)
    return outcome, state


def cmd_watch(args: argparse.Namespace, client: Any) -> None:
    dataset_id = args.watch or args.dataset
    if not dataset_id:
        raise CLIError("--watch needs a dataset id", EXIT_USAGE)
    if args.interval <= 0:
        raise CLIError("--interval must be more than 0 seconds", EXIT_USAGE)
    started = time.monotonic()
    console = Console(highlight=False)
    try:
        outcome, state = watch(client, dataset_id, args.interval, console)
    except KeyboardInterrupt:
        console.print(f"stopped watching dataset {dataset_id} (it keeps running on the "
                      "server)")
        raise SystemExit(130) from None
    except RPCError as e:
        raise CLIError(str(e)) from e
    elapsed = time.monotonic() - started
    if outcome == "stopped":
        raise CLIError(f"dataset {dataset_id} is {state.dataset.get('status')} "
                       f"({detail(state.totals) or 'no tasks left to run'})")
    console.print(f"dataset {dataset_id} is complete (watched for {elapsed:.0f} s)")
