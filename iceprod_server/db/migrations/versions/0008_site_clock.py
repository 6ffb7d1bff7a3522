"""Federation that never sticks: the outbox remembers how much of a log sent in pieces the
master has, the master keeps such pieces until the log is whole, and a client site records
which of its server processes runs the link to the master.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None

_LONGTEXT = sa.Text().with_variant(mysql.LONGTEXT(), "mariadb").with_variant(
    mysql.LONGTEXT(), "mysql")


def upgrade() -> None:
    # a plain ADD COLUMN: the outbox has no triggers of its own, those that fill it stay
    op.add_column("outbox", sa.Column("sent", sa.BigInteger(), server_default="0",
                                      nullable=False))
    op.create_table(
        "site_log_pieces",
        sa.Column("origin", sa.String(length=96), nullable=False),
        sa.Column("offset", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("end", sa.BigInteger(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("task_id", sa.String(length=32), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("created", sa.Double(), nullable=False),
        sa.Column("data", _LONGTEXT, nullable=False),
        sa.Column("received", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.task_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("origin", "offset"),
    )
    op.create_index("ix_site_log_pieces_received", "site_log_pieces", ["received"])
    op.create_table(
        "site_link",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("expires", sa.Double(), nullable=False),
        sa.Column("status", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("site_link")
    op.drop_index("ix_site_log_pieces_received", table_name="site_log_pieces")
    op.drop_table("site_log_pieces")
    # a plain DROP COLUMN: on SQLite a batch (copy and rename) trips over the triggers
    # that insert into the outbox
    op.drop_column("outbox", "sent")
