"""IceProd 2 pilots: per-passkey leases, the claimants of the last two attempts, when an
attempt was reported, and the retry back-off.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

TASK_COLUMNS: dict[str, sa.types.TypeEngine[Any]] = {
    "last_claimant": sa.String(length=128),
    "prev_claimant": sa.String(length=128),
    "reported_attempt": sa.Integer(),
    "reported_at": sa.Double(),
    "retry_after": sa.Double(),
}


def upgrade() -> None:
    # plain ALTER TABLE (SQLite 3.35+ drops columns too): no table copy, so the count
    # triggers on tasks stay in place
    op.add_column("passkeys", sa.Column("lease_seconds", sa.Double(), nullable=True))
    for name, kind in TASK_COLUMNS.items():
        op.add_column("tasks", sa.Column(name, kind, nullable=True))
    # the holders of claims made before this revision
    op.execute("UPDATE tasks SET last_claimant = claimed_by WHERE claimed_by IS NOT NULL")


def downgrade() -> None:
    for name in reversed(TASK_COLUMNS):
        op.drop_column("tasks", name)
    op.drop_column("passkeys", "lease_seconds")
