"""Site-to-site federation: task ownership and versions, the client's outbox and its
triggers, and the master's per-site link state and refusals.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from iceprod_server.db import sync_triggers

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

_BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # plain ADD COLUMN and CREATE INDEX: on SQLite a batch (copy) would drop the triggers
    # of these tables
    op.add_column("tasks", sa.Column("site_id", sa.String(length=32), nullable=True))
    op.add_column("tasks", sa.Column("version", sa.String(length=64), nullable=True))
    op.add_column("tasks", sa.Column("site_attempt", sa.Integer(), nullable=True))
    op.create_index("ix_tasks_site_changed", "tasks", ["site_id", "status_changed"])
    for table in ("task_stats", "task_logs"):
        op.add_column(table, sa.Column("origin", sa.String(length=96), nullable=True))
        op.create_index(f"uq_{table}_origin", table, ["origin"], unique=True)
    op.create_table(
        "outbox",
        sa.Column("outbox_id", _BIGINT, autoincrement=True, nullable=False),
        sa.Column("table_name", sa.String(length=32), nullable=False),
        sa.Column("row_key", sa.String(length=64), nullable=False),
        sa.Column("task_id", sa.String(length=32), nullable=False),
        sa.Column("site_attempt", sa.Integer(), nullable=False),
        sa.Column("created", sa.Double(), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("outbox_id"),
    )
    op.create_table(
        "site_state",
        sa.Column("site_id", sa.String(length=32), nullable=False),
        sa.Column("last_contact", sa.Double(), nullable=True),
        sa.Column("refused", sa.BigInteger(), nullable=False),
        sa.Column("applied", sa.BigInteger(), nullable=False),
        sa.Column("outbox_backlog", sa.BigInteger(), nullable=False),
        sa.Column("clock_offset", sa.Double(), nullable=True),
        sa.ForeignKeyConstraint(["site_id"], ["sites.site_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("site_id"),
    )
    op.create_table(
        "site_refusals",
        sa.Column("refusal_id", _BIGINT, autoincrement=True, nullable=False),
        sa.Column("site_id", sa.String(length=32), nullable=False),
        sa.Column("created", sa.Double(), nullable=False),
        sa.Column("table_name", sa.String(length=64), nullable=False),
        sa.Column("row_key", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("refusal_id"),
    )
    op.create_index("ix_site_refusals_site", "site_refusals", ["site_id", "refusal_id"])
    dialect = op.get_bind().dialect.name
    for statement in sync_triggers.create_statements(dialect):
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for statement in sync_triggers.drop_statements(dialect):
        op.execute(statement)
    op.drop_index("ix_site_refusals_site", table_name="site_refusals")
    op.drop_table("site_refusals")
    op.drop_table("site_state")
    op.drop_table("outbox")
    for table in ("task_stats", "task_logs"):
        op.drop_index(f"uq_{table}_origin", table_name=table)
        op.drop_column(table, "origin")
    op.drop_index("ix_tasks_site_changed", table_name="tasks")
    for column in ("site_attempt", "version", "site_id"):
        op.drop_column("tasks", column)
