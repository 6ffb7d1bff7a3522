"""Sharded counters: task_counts and task_stat_hours get a shard column in their keys, and
the triggers add to a shard of their own (MariaDB: the connection's), so concurrent claims
and finishes never wait on one counter row.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from iceprod_server.db import triggers

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def _create_tables(sharded: bool) -> None:
    shard = [sa.Column("shard", sa.SmallInteger(), nullable=False)] if sharded else []
    op.create_table(
        "task_counts",
        sa.Column("dataset_id", sa.String(length=32), nullable=False),
        sa.Column("task_index", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        *shard,
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.dataset_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("dataset_id", "task_index", "status",
                                *(["shard"] if sharded else [])),
    )
    op.create_table(
        "task_stat_hours",
        sa.Column("dataset_id", sa.String(length=32), nullable=False),
        sa.Column("hour", sa.Integer(), nullable=False),
        *([sa.Column("shard", sa.SmallInteger(), nullable=False)] if sharded else []),
        sa.Column("complete", sa.BigInteger(), nullable=False),
        sa.Column("failed", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.dataset_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("dataset_id", "hour", *(["shard"] if sharded else [])),
    )
    op.create_index("ix_task_stat_hours_hour", "task_stat_hours", ["hour"], unique=False)


def _rebuild(sharded: bool) -> None:
    # the counts are derived data: drop the triggers and tables, make them again, refill
    dialect = op.get_bind().dialect.name
    for statement in triggers.drop_statements(dialect):
        op.execute(statement)
    op.drop_index("ix_task_stat_hours_hour", table_name="task_stat_hours")
    op.drop_table("task_stat_hours")
    op.drop_table("task_counts")
    _create_tables(sharded)
    statements = (triggers.create_sharded_statements(dialect) if sharded
                  else triggers.create_statements(dialect))
    for statement in statements:
        op.execute(statement)


def upgrade() -> None:
    _rebuild(sharded=True)


def downgrade() -> None:
    _rebuild(sharded=False)
