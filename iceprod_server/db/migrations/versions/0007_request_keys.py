"""Request keys: a creating call repeated with the same key gets the first answer.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "request_keys",
        sa.Column("scope", sa.String(length=200), nullable=False),
        sa.Column("request_key", sa.String(length=64), nullable=False),
        sa.Column("method", sa.String(length=64), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("token", sa.String(length=32), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("created", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "request_key"),
    )
    op.create_index("ix_request_keys_created", "request_keys", ["created"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_request_keys_created", table_name="request_keys")
    op.drop_table("request_keys")
