"""Triggers that keep task_counts and task_stat_hours exact, and their first fill.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

from iceprod_server.db import triggers

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for statement in triggers.create_statements(dialect):
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for statement in triggers.drop_statements(dialect):
        op.execute(statement)
