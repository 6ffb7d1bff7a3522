"""IceProd 2.3.2's clients: a dataset's DIF-plus record kept with its config, and the
per-interval points of ``public_get_graphs``.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("dataset_configs",
                  sa.Column("difplus", sa.Text().with_variant(mysql.LONGTEXT(), "mariadb")
                            .with_variant(mysql.LONGTEXT(), "mysql"), nullable=True))
    op.create_table(
        "graph_points",
        sa.Column("at", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("at", "name"),
    )


def downgrade() -> None:
    op.drop_table("graph_points")
    op.drop_column("dataset_configs", "difplus")
