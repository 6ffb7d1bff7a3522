"""Claims: ``new_task`` calls that arrive together are served together.

While one group of claims is in the database, the calls that arrive meanwhile wait in
:class:`ClaimBatcher`; the next group takes them all in one unit of work: per distinct
offer one ``SELECT`` of the best fitting queued tasks, ``LIMIT`` the sum of what the
callers may take (``FOR UPDATE SKIP LOCKED`` on MariaDB), split among the callers in
arrival order, the best task to the earliest caller, then one conditional ``UPDATE``
(``status = 'queued'``; on SQLite run for each task with its caller's token, on MariaDB
one statement for the batch, the callers' values chosen by task id) and one ``SELECT`` of
what was claimed. A task the conditional update did not change (another process took it)
goes to nobody, so the exactly-once guarantee is that of a single claim.

A call with a ``request_key`` writes its key first (:mod:`iceprod_server.db.
request_keys`), with its claim token: a repeat of a call that took effect (its answer was
lost, or was -32006) claims nothing new and answers the tasks that call claimed which the
caller still holds.
"""

from __future__ import annotations

import itertools
import json
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, bindparam, case, or_, select, update
from sqlalchemy.orm import Session

from iceprod_server.db import request_keys
from iceprod_server.db.models import Dataset, DatasetConfig, Task
from iceprod_server.db.tasks import Offer, _claim_values, _listed, _requirements, _resources
from iceprod_server.errors import IceProdError
from iceprod_server.executors.batcher import Batcher


@dataclass(frozen=True)
class ClaimRequest:
    """One ``new_task`` call: who claims, what it offers, the lease of its claims."""

    claimant: str
    offer: Offer
    lease_seconds: float
    request_key: str | None = None

    def entry(self, token: str) -> request_keys.Entry:
        assert self.request_key is not None
        offer = self.offer
        return request_keys.Entry(self.claimant, self.request_key, "new_task",
                                  request_keys.fingerprint({
                                      "cpu": offer.cpu, "gpu": offer.gpu,
                                      "memory": offer.memory, "disk": offer.disk,
                                      "time": offer.time, "os": offer.os}), token)


# Statements of the hot path are built once; each call only binds values.
_FIT_COLUMNS = (Task.task_id, Task.req_cpu, Task.req_gpu, Task.req_memory, Task.req_disk,
                Task.req_time, Task.req_os, Task.last_claimant)
_FITTING = (
    select(*_FIT_COLUMNS)
    .where(Task.status == "queued", Task.req_cpu <= bindparam("b_cpu"),
           Task.req_gpu <= bindparam("b_gpu"), Task.req_memory <= bindparam("b_memory"),
           Task.req_disk <= bindparam("b_disk"), Task.req_time <= bindparam("b_time"),
           # one platform, or a pilot's platform among several (requirements.os_column)
           or_(Task.req_os.is_(None), Task.req_os == bindparam("b_os"),
               Task.req_os.like(bindparam("b_os_listed"), escape="/")))
    .order_by(Task.queue_rank, Task.task_id)
    .limit(bindparam("b_limit", type_=Integer))
)
_FITTING_LOCKED = _FITTING.with_for_update(skip_locked=True)


_CLAIM_ONE = (
    update(Task)
    .where(Task.task_id == bindparam("b_id"), Task.status == "queued")
    .ordered_values(*_claim_values(bindparam("b_now"), bindparam("b_token"),
                                   bindparam("b_claimant"), bindparam("b_lease")))
)
# what was claimed, by the callers' tokens; then the datasets of those tasks. Two queries,
# not a join: joined, MariaDB starts from the dataset and reads every task of it
_CLAIMED = (
    select(Task.claim, Task.task_id, Task.name, Task.job_index, Task.attempt,
           Task.req_cpu, Task.req_gpu, Task.req_memory, Task.req_disk, Task.req_time,
           Task.req_os, Task.dataset_id, Task.status, Task.claimed_by)
    .where(Task.claim.in_(bindparam("b_tokens", expanding=True)))
    .order_by(Task.queue_rank, Task.task_id)
)
_CLAIMED_DATASETS = (
    select(Dataset.dataset_id, Dataset.dataset_num, Dataset.njobs, Dataset.debug,
           DatasetConfig.updated, DatasetConfig.config)
    .join(DatasetConfig, DatasetConfig.dataset_id == Dataset.dataset_id)
    .where(Dataset.dataset_id.in_(bindparam("b_ids", expanding=True)))
)

# parsed dataset configs by (dataset id, last update); a config is read far more than changed
_configs: dict[tuple[str, float], Any] = {}
_configs_lock = threading.Lock()


def _parsed_config(dataset_id: str, updated: float, text: str) -> Any:
    key = (dataset_id, updated)
    with _configs_lock:
        found = _configs.get(key)
    if found is None:
        found = json.loads(text) if text else {}
        with _configs_lock:
            if len(_configs) > 256:
                _configs.clear()
            _configs[key] = found
    return found


def _description(r: Any, ds: Any) -> dict[str, Any]:
    """A claimed task (``r``) of dataset ``ds`` as IceProd 2.3 servers sent it: the dataset
    config itself, with ``dataset`` set to the dataset number and the task's options merged
    into ``options``."""
    config = _parsed_config(ds.dataset_id, ds.updated, ds.config)
    desc: dict[str, Any] = dict(config) if isinstance(config, dict) else {}
    options = dict(desc.get("options") or {})
    options.update({
        "task_id": r.task_id,
        "task": r.name,
        "dataset_id": ds.dataset_id,
        "dataset": ds.dataset_num,
        "job": r.job_index,
        "jobs_submitted": ds.njobs,
        "debug": bool(ds.debug),
        "resources": _resources(r),
        "attempt": r.attempt,
    })
    desc["options"] = options
    desc["dataset"] = ds.dataset_num
    return desc


def _choose(rows: list[Any], claimant: str, offer: Offer, taken: set[str]) -> list[str]:
    """The tasks one caller gets from the candidates left, best first, packing several
    while they fit. A task whose last attempt was this claimant's goes to it only when
    nothing else among the candidates fits, so a retry usually runs on another pilot."""
    chosen: list[str] = []
    left = offer
    # best first among tasks new to this claimant, then its own retries (lazily: a
    # caller usually stops at its first task)
    for row in itertools.chain((r for r in rows if r.last_claimant != claimant),
                               (r for r in rows if r.last_claimant == claimant)):
        if row.task_id in taken:
            continue
        req = _requirements(row)
        if left.fits(req):
            chosen.append(row.task_id)
            left = left.minus(req)
            if left.cpu < 1:
                break
    return chosen


def _per_caller(offer: Offer) -> int:
    """Candidates a caller's share of the SELECT holds."""
    return 2 * offer.cpu + 4


Answer = list[dict[str, Any]] | IceProdError


def claim_batch(s: Session, requests: list[ClaimRequest]) -> list[Answer]:
    """Claim queued tasks for each request, in order; returns each request's task
    descriptions (see :func:`_description`), an empty list when nothing fitted. A repeat
    of a keyed call that took effect gets the tasks of that call the caller still holds;
    a key used before for another offer, -32602."""
    conn = s.connection()
    query = _FITTING if conn.dialect.name == "sqlite" else _FITTING_LOCKED
    now = time.time()
    tokens = [secrets.token_hex(16) for _ in requests]
    answers: list[Answer] = [[] for _ in requests]
    # the claim token of each call that is a repeat, and whose answer is settled
    repeats = _repeats(conn, requests, tokens, answers, now)
    groups: dict[Offer, list[int]] = {}
    for i, r in enumerate(requests):
        if r.offer.cpu >= 1 and i not in repeats:
            groups.setdefault(r.offer, []).append(i)
    claims: list[dict[str, Any]] = []
    for offer, members in groups.items():
        rows = list(conn.execute(query, {
            "b_cpu": offer.cpu, "b_gpu": offer.gpu, "b_memory": offer.memory,
            "b_disk": offer.disk, "b_time": offer.time, "b_os": offer.os,
            "b_os_listed": _listed(offer.os),
            "b_limit": _per_caller(offer) * len(members)}))
        taken: set[str] = set()
        for i in members:
            r = requests[i]
            for task_id in _choose(rows, r.claimant, offer, taken):
                taken.add(task_id)
                claims.append({"b_id": task_id, "b_now": now, "b_token": tokens[i],
                               "b_claimant": r.claimant, "b_lease": now + r.lease_seconds})
    if claims:
        _claim(conn, claims, now)
    index = {token: i for i, token in enumerate(tokens)}
    for i, token in repeats.items():
        if token:
            index[token] = i
    wanted = [c["b_token"] for c in claims] + [t for t in repeats.values() if t]
    if not wanted:
        return answers
    claimed = [row for row in conn.execute(_CLAIMED, {"b_tokens": wanted})
               if row.status == "processing"
               and row.claimed_by == requests[index[row.claim]].claimant]
    datasets = {ds.dataset_id: ds for ds in conn.execute(
        _CLAIMED_DATASETS, {"b_ids": sorted({r.dataset_id for r in claimed})})}
    for row in claimed:
        answer = answers[index[row.claim]]
        assert isinstance(answer, list)
        answer.append(_description(row, datasets[row.dataset_id]))
    return answers


def _repeats(conn: Any, requests: list[ClaimRequest], tokens: list[str],
             answers: list[Answer], now: float) -> dict[int, str]:
    """Write the keys of the keyed calls; returns, for each call that must claim nothing
    now, the claim token of its earlier run ("" for a key misused, whose -32602 is put
    in ``answers``)."""
    keyed = {i: r.entry(tokens[i]) for i, r in enumerate(requests) if r.request_key}
    if not keyed:
        return {}
    rows = request_keys.take(conn, list(keyed.values()), now)
    repeats: dict[int, str] = {}
    for i, entry in keyed.items():
        row = rows[(entry.scope, entry.key)]
        if row.token == entry.token:
            continue
        problem = request_keys.repeat_problem(row, entry)
        if problem is not None:
            answers[i] = problem
            repeats[i] = ""
        else:
            repeats[i] = row.token
    return repeats


def _claim(conn: Any, claims: list[dict[str, Any]], now: float) -> None:
    """The conditional UPDATE of a batch. SQLite runs the one prepared statement for each
    task (a loop in C, no round trips); on MariaDB that would be a round trip per task, so
    the batch is one statement whose per-caller values are CASE expressions on the task
    id. Either way a task that is no longer queued is left alone, and only the tasks that
    carry a caller's token are that caller's."""
    if conn.dialect.name == "sqlite":
        conn.execute(_CLAIM_ONE, claims)
        return

    def per_task(key: str) -> Any:
        return case({c["b_id"]: c[key] for c in claims}, value=Task.task_id)

    conn.execute(
        update(Task)
        .where(Task.task_id.in_([c["b_id"] for c in claims]), Task.status == "queued")
        .ordered_values(*_claim_values(now, per_task("b_token"), per_task("b_claimant"),
                                       per_task("b_lease"))))


class ClaimBatcher(Batcher[ClaimRequest, list[dict[str, Any]]]):
    """Gathers the ``new_task`` calls of one process (see :mod:`iceprod_server.executors.
    batcher`)."""

    def __init__(self, write: Any, max_group: int = 200) -> None:
        super().__init__(write, claim_batch, max_group)

    async def claim(self, request: ClaimRequest) -> list[dict[str, Any]]:
        return await self.submit(request)
