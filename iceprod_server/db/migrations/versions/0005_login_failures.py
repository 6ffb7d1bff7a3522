"""Failed logins in the database, so that every server process counts the same attempts.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "login_failures",
        sa.Column("failure_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  autoincrement=True, nullable=False),
        sa.Column("username", sa.String(length=128), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("created", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("failure_id"),
    )
    op.create_index("ix_login_failures_who", "login_failures",
                    ["username", "address", "created"], unique=False)
    op.create_index("ix_login_failures_created", "login_failures", ["created"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_login_failures_created", table_name="login_failures")
    op.drop_index("ix_login_failures_who", table_name="login_failures")
    op.drop_table("login_failures")
