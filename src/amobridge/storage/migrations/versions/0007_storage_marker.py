"""the database's identity (a service finding it gone or emptied refuses to start)

One row naming this database, so a service that finds it gone or swapped for an empty one
refuses to start instead of starting afresh.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-13 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "storage_marker",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("instance_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("probed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_storage_marker")),
    )


def downgrade() -> None:
    op.drop_table("storage_marker")
