"""SQLAlchemy models: the whole schema, and the indexes its hot queries need.

Times are seconds since the epoch (floats), the same on SQLite and MariaDB. Identifiers are
short strings made by :mod:`iceprod_server.db.ids`, unique across processes and sites.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Double,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ID = String(32)
# LONGTEXT on MariaDB: configs and logs can exceed TEXT's 64 KiB
LongText = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
JsonCol = JSON()

ROLES = ("pilot", "user", "admin")


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """Small key/value facts about this database (site id, counters)."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))


class User(Base):
    __tablename__ = "users"
    user_id: Mapped[str] = mapped_column(ID, primary_key=True)
    username: Mapped[str] = mapped_column(String(128), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="user")
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[float] = mapped_column(Double)


class LoginSession(Base):
    """A human's login: the cookie carries the token, the database keeps its hash, so a
    logout (or disabling the user) ends it everywhere at once."""

    __tablename__ = "login_sessions"
    session_hash: Mapped[str] = mapped_column(String(128), primary_key=True)
    user_id: Mapped[str] = mapped_column(ID, ForeignKey("users.user_id", ondelete="CASCADE"))
    created: Mapped[float] = mapped_column(Double)
    expires: Mapped[float] = mapped_column(Double)
    __table_args__ = (Index("ix_login_sessions_expires", "expires"),)


class LoginFailure(Base):
    """A failed login, by user name and address. Every server process counts the same
    rows, so the limit per minute holds however many processes serve ``/login``."""

    __tablename__ = "login_failures"
    failure_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                            primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(128))
    address: Mapped[str] = mapped_column(String(64))
    created: Mapped[float] = mapped_column(Double)
    __table_args__ = (Index("ix_login_failures_who", "username", "address", "created"),
                      Index("ix_login_failures_created", "created"))


class Group(Base):
    __tablename__ = "groups"
    group_id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    priority: Mapped[float] = mapped_column(Double, default=1.0)
    description: Mapped[str] = mapped_column(String(1024), default="")


class Site(Base):
    __tablename__ = "sites"
    site_id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    key_hash: Mapped[str | None] = mapped_column(String(128), nullable=True)
    cert_dn: Mapped[str | None] = mapped_column(String(512), nullable=True)
    created: Mapped[float] = mapped_column(Double)


class Passkey(Base):
    __tablename__ = "passkeys"
    key_id: Mapped[str] = mapped_column(ID, primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[str | None] = mapped_column(
        ID, ForeignKey("users.user_id", ondelete="CASCADE"), nullable=True
    )
    # neither written nor read: keys are not bound to sites (docs/methods.md, Admin); it
    # holds what older versions wrote, which never gave a key any right or limit
    site_id: Mapped[str | None] = mapped_column(
        ID, ForeignKey("sites.site_id", ondelete="CASCADE"), nullable=True
    )
    description: Mapped[str] = mapped_column(String(255), default="")
    created: Mapped[float] = mapped_column(Double)
    expires: Mapped[float | None] = mapped_column(Double, nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    # seconds a task claimed with this key lives without a call about it; NULL: the
    # server's lease_seconds
    lease_seconds: Mapped[float | None] = mapped_column(Double, nullable=True)


class Dataset(Base):
    __tablename__ = "datasets"
    dataset_id: Mapped[str] = mapped_column(ID, primary_key=True)
    # IceProd's dataset number (options.dataset), unique and increasing
    dataset_num: Mapped[int] = mapped_column(Integer, unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    owner_id: Mapped[str | None] = mapped_column(ID, ForeignKey("users.user_id"), nullable=True)
    group_id: Mapped[str | None] = mapped_column(ID, ForeignKey("groups.group_id"), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="processing")
    priority: Mapped[float] = mapped_column(Double, default=0.0)
    debug: Mapped[bool] = mapped_column(Boolean, default=False)
    njobs: Mapped[int] = mapped_column(Integer)
    ntasks: Mapped[int] = mapped_column(Integer)  # task definitions per job
    jobs_materialized: Mapped[int] = mapped_column(Integer, default=0)
    gridspec: Mapped[str] = mapped_column(String(255), default="")
    stat_keys: Mapped[Any] = mapped_column(JsonCol, default=list)
    created: Mapped[float] = mapped_column(Double)
    status_changed: Mapped[float] = mapped_column(Double)
    __table_args__ = (Index("ix_datasets_status", "status"),)


class DatasetConfig(Base):
    __tablename__ = "dataset_configs"
    dataset_id: Mapped[str] = mapped_column(
        ID, ForeignKey("datasets.dataset_id", ondelete="CASCADE"), primary_key=True
    )
    config: Mapped[str] = mapped_column(LongText)  # JSON text, exactly as accepted
    updated: Mapped[float] = mapped_column(Double)
    # IceProd 2's DIF-plus record of the dataset, as submitted (text); NULL: none given
    difplus: Mapped[str | None] = mapped_column(LongText, nullable=True)


class TaskDef(Base):
    """One task of a dataset's config; every job has one task per definition."""

    __tablename__ = "task_defs"
    dataset_id: Mapped[str] = mapped_column(
        ID, ForeignKey("datasets.dataset_id", ondelete="CASCADE"), primary_key=True
    )
    task_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    requirements: Mapped[Any] = mapped_column(JsonCol, default=dict)


class TaskDefDep(Base):
    """Task ``task_index`` of a dataset needs task ``dep_task_index`` of ``dep_dataset_id``,
    in the job with the same index, to be complete first."""

    __tablename__ = "task_def_deps"
    dataset_id: Mapped[str] = mapped_column(ID, primary_key=True)
    task_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    dep_dataset_id: Mapped[str] = mapped_column(ID, primary_key=True)
    dep_task_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    __table_args__ = (
        Index("ix_task_def_deps_dep", "dep_dataset_id", "dep_task_index"),
    )


class Job(Base):
    __tablename__ = "jobs"
    job_id: Mapped[str] = mapped_column(ID, primary_key=True)
    dataset_id: Mapped[str] = mapped_column(
        ID, ForeignKey("datasets.dataset_id", ondelete="CASCADE")
    )
    job_index: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="processing")
    status_changed: Mapped[float] = mapped_column(Double)
    __table_args__ = (
        UniqueConstraint("dataset_id", "job_index", name="uq_jobs_dataset_index"),
        Index("ix_jobs_dataset_status", "dataset_id", "status"),
    )


class Task(Base):
    __tablename__ = "tasks"
    task_id: Mapped[str] = mapped_column(ID, primary_key=True)
    dataset_id: Mapped[str] = mapped_column(
        ID, ForeignKey("datasets.dataset_id", ondelete="CASCADE")
    )
    job_id: Mapped[str] = mapped_column(ID, ForeignKey("jobs.job_id", ondelete="CASCADE"))
    job_index: Mapped[int] = mapped_column(Integer)
    task_index: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="idle")
    status_changed: Mapped[float] = mapped_column(Double)
    # claims take queued tasks in (queue_rank, task_id) order: the scheduler sets the rank
    # to the negated effective priority, so ties go to the oldest task (ids sort by time)
    queue_rank: Mapped[float] = mapped_column(Double, default=0.0)
    # incremented on every claim; a pilot's call must name the current one
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    # random token of the current claim; identifies the claim that a pilot holds
    claim: Mapped[str | None] = mapped_column(String(64), nullable=True)
    claimed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires: Mapped[float | None] = mapped_column(Double, nullable=True)
    # the claimants of the latest attempt and of the one before, kept after their claims
    # end: a late caller hears "stop" (stillrunning false) and may still upload its logs
    last_claimant: Mapped[str | None] = mapped_column(String(128), nullable=True)
    prev_claimant: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # the latest attempt that its claimant ended (finish_task, task_error), and when
    reported_attempt: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reported_at: Mapped[float | None] = mapped_column(Double, nullable=True)
    # a failed task waits in reset until this time before it is queued again
    retry_after: Mapped[float | None] = mapped_column(Double, nullable=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    req_cpu: Mapped[int] = mapped_column(Integer, default=1)
    req_gpu: Mapped[int] = mapped_column(Integer, default=0)
    req_memory: Mapped[float] = mapped_column(Double, default=1.0)
    req_disk: Mapped[float] = mapped_column(Double, default=1.0)
    req_time: Mapped[float] = mapped_column(Double, default=1.0)
    req_os: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # federation (docs/federation.md). At the master: the site that holds, or last held,
    # the task, and the version (hybrid logical clock) of the last change a site made.
    # At a client: the master's attempt this copy belongs to (NULL for a local task).
    site_id: Mapped[str | None] = mapped_column(ID, nullable=True)
    version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    site_attempt: Mapped[int | None] = mapped_column(Integer, nullable=True)
    __table_args__ = (
        UniqueConstraint("dataset_id", "job_index", "task_index", name="uq_tasks_position"),
        Index("ix_tasks_status_rank", "status", "queue_rank", "task_id"),
        Index("ix_tasks_dataset_status", "dataset_id", "status", "task_index"),
        Index("ix_tasks_dataset_id", "dataset_id", "task_id"),
        Index("ix_tasks_job", "job_id", "task_index"),
        Index("ix_tasks_status_lease", "status", "lease_expires"),
        Index("ix_tasks_status_changed", "status", "status_changed"),
        Index("ix_tasks_changed", "status_changed", "task_id"),
        Index("ix_tasks_claim", "claim"),
        Index("ix_tasks_site_changed", "site_id", "status_changed"),
    )


class TaskStat(Base):
    __tablename__ = "task_stats"
    stat_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                         primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ID, ForeignKey("tasks.task_id", ondelete="CASCADE"))
    dataset_id: Mapped[str] = mapped_column(ID)
    attempt: Mapped[int] = mapped_column(Integer)
    created: Mapped[float] = mapped_column(Double)
    error: Mapped[bool] = mapped_column(Boolean, default=False)
    hostname: Mapped[str] = mapped_column(String(255), default="")
    time_used: Mapped[float | None] = mapped_column(Double, nullable=True)
    stats: Mapped[Any] = mapped_column(JsonCol, default=dict)
    # "<site id>:<stat id there>" for a row a client site sent: a resend is a no-op
    origin: Mapped[str | None] = mapped_column(String(96), nullable=True)
    __table_args__ = (
        Index("uq_task_stats_origin", "origin", unique=True),
        Index("ix_task_stats_task", "task_id", "attempt"),
        Index("ix_task_stats_dataset_created", "dataset_id", "created"),
        Index("ix_task_stats_created", "created"),
    )


class TaskLog(Base):
    __tablename__ = "task_logs"
    log_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                        primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ID, ForeignKey("tasks.task_id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(64))
    created: Mapped[float] = mapped_column(Double)
    size: Mapped[int] = mapped_column(BigInteger)
    # the log itself, or NULL when it was written to ``path`` under the data directory
    data: Mapped[str | None] = mapped_column(LongText, nullable=True)
    path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    origin: Mapped[str | None] = mapped_column(String(96), nullable=True)
    __table_args__ = (Index("ix_task_logs_task", "task_id", "name", "created"),
                      Index("uq_task_logs_origin", "origin", unique=True))


class Pilot(Base):
    __tablename__ = "pilots"
    pilot_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str | None] = mapped_column(ID, nullable=True)
    hostname: Mapped[str] = mapped_column(String(255), default="")
    site: Mapped[str] = mapped_column(String(255), default="")
    tasks: Mapped[Any] = mapped_column(JsonCol, default=list)
    resources_available: Mapped[Any] = mapped_column(JsonCol, default=dict)
    resources_claimed: Mapped[Any] = mapped_column(JsonCol, default=dict)
    last_update: Mapped[float] = mapped_column(Double)


class AuditLog(Base):
    __tablename__ = "audit_log"
    audit_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                          primary_key=True, autoincrement=True)
    created: Mapped[float] = mapped_column(Double)
    actor: Mapped[str] = mapped_column(String(255))
    method: Mapped[str] = mapped_column(String(128))
    target: Mapped[str] = mapped_column(String(255), default="")
    params: Mapped[Any] = mapped_column(JsonCol, default=dict)
    rows: Mapped[int] = mapped_column(Integer, default=0)
    __table_args__ = (Index("ix_audit_log_created", "created"),)


class TaskCount(Base):
    """How many tasks of each definition are in each state. Kept exact by database triggers
    on ``tasks`` (:mod:`iceprod_server.db.triggers`), so counts cost the same with a million
    tasks as with ten. Each count is spread over shards so that concurrent transactions
    change different rows: the count is ``SUM(n)`` over the shards (one shard may be
    negative)."""

    __tablename__ = "task_counts"
    dataset_id: Mapped[str] = mapped_column(
        ID, ForeignKey("datasets.dataset_id", ondelete="CASCADE"), primary_key=True)
    task_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False,
                                       default=0)
    n: Mapped[int] = mapped_column(BigInteger, default=0)


class TaskStatHour(Base):
    """Finished and failed attempts per dataset and hour (epoch seconds // 3600), kept by a
    trigger on ``task_stats``: the throughput charts read these, never the stats rows.
    Sharded like :class:`TaskCount`: sum over the shards."""

    __tablename__ = "task_stat_hours"
    dataset_id: Mapped[str] = mapped_column(
        ID, ForeignKey("datasets.dataset_id", ondelete="CASCADE"), primary_key=True)
    hour: Mapped[int] = mapped_column(Integer, primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False,
                                       default=0)
    complete: Mapped[int] = mapped_column(BigInteger, default=0)
    failed: Mapped[int] = mapped_column(BigInteger, default=0)
    __table_args__ = (Index("ix_task_stat_hours_hour", "hour"),)


class Outbox(Base):
    """At a client site: rows changed here that the master has not acknowledged yet.

    Written by database triggers (:mod:`iceprod_server.db.sync_triggers`) in the
    transaction of the change itself; the sender pushes and deletes them."""

    __tablename__ = "outbox"
    outbox_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                           primary_key=True, autoincrement=True)
    table_name: Mapped[str] = mapped_column(String(32))
    row_key: Mapped[str] = mapped_column(String(64))
    task_id: Mapped[str] = mapped_column(ID)
    # the master's attempt the change belongs to
    site_attempt: Mapped[int] = mapped_column(Integer)
    created: Mapped[float] = mapped_column(Double)
    # hybrid logical clock, given on the first push and kept for every retry
    version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # a log sent in pieces: bytes of it the master has acknowledged so far
    sent: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class SiteState(Base):
    """At the master: what it knows of each client site's link."""

    __tablename__ = "site_state"
    site_id: Mapped[str] = mapped_column(
        ID, ForeignKey("sites.site_id", ondelete="CASCADE"), primary_key=True)
    last_contact: Mapped[float | None] = mapped_column(Double, nullable=True)
    refused: Mapped[int] = mapped_column(BigInteger, default=0)
    applied: Mapped[int] = mapped_column(BigInteger, default=0)
    outbox_backlog: Mapped[int] = mapped_column(BigInteger, default=0)
    # the site's clock minus ours, from the newest version it sent (seconds)
    clock_offset: Mapped[float | None] = mapped_column(Double, nullable=True)


class SiteLogPiece(Base):
    """At the master: a piece of a log a site sends in pieces, kept until the last piece
    arrived and the log is stored whole (``origin`` names the log as in ``task_logs``)."""

    __tablename__ = "site_log_pieces"
    origin: Mapped[str] = mapped_column(String(96), primary_key=True)
    # bytes [offset, end) of the log's ``size`` bytes
    offset: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    end: Mapped[int] = mapped_column(BigInteger)
    size: Mapped[int] = mapped_column(BigInteger)
    task_id: Mapped[str] = mapped_column(ID, ForeignKey("tasks.task_id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(64))
    created: Mapped[float] = mapped_column(Double)
    data: Mapped[str] = mapped_column(LongText)
    # when the piece arrived: pieces of a log never finished are dropped after a week
    received: Mapped[float] = mapped_column(Double)
    __table_args__ = (Index("ix_site_log_pieces_received", "received"),)


class SiteLink(Base):
    """At a client site: which server process runs the link to the master (one per site,
    however many processes serve it), until when, and what it last reported."""

    __tablename__ = "site_link"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires: Mapped[float] = mapped_column(Double)
    status: Mapped[Any] = mapped_column(JsonCol, nullable=True)


class SiteRefusal(Base):
    """At the master: a change a site sent that was refused, and why."""

    __tablename__ = "site_refusals"
    refusal_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                            primary_key=True, autoincrement=True)
    site_id: Mapped[str] = mapped_column(ID)
    created: Mapped[float] = mapped_column(Double)
    table_name: Mapped[str] = mapped_column(String(64))
    row_key: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(String(255))
    __table_args__ = (Index("ix_site_refusals_site", "site_id", "refusal_id"),)


class RequestKey(Base):
    """A call made with a client's ``request_key``: a repeat of the call with the same key
    gets the first call's answer instead of running again (:mod:`iceprod_server.db.
    request_keys`). The row is written in the transaction of the call itself, so it exists
    exactly when the call took effect. ``scope`` is the caller (keys of different callers
    never meet); ``token`` is made afresh by each run, which then knows whether the row is
    its own; for ``new_task`` it is the claim token of the tasks that call claimed."""

    __tablename__ = "request_keys"
    scope: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    method: Mapped[str] = mapped_column(String(64))
    fingerprint: Mapped[str] = mapped_column(String(64))
    token: Mapped[str] = mapped_column(String(32))
    result: Mapped[Any] = mapped_column(JsonCol, nullable=True)
    created: Mapped[float] = mapped_column(Double)
    __table_args__ = (Index("ix_request_keys_created", "created"),)


class GraphPoint(Base):
    """One point of the charts IceProd 2.3.2's main page drew (``public_get_graphs``): the
    scheduler records ``active_tasks`` and ``completed_tasks`` at the end of every
    ``graph_interval`` seconds (``at``: that moment, epoch seconds) and keeps a week's
    worth at the default interval (:mod:`iceprod_server.db.graphs`)."""

    __tablename__ = "graph_points"
    at: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[Any] = mapped_column(JsonCol, default=dict)
