"""imports: the runs that pull an account into the lead mirror

imports: the runs that pull an account into the lead mirror (a full import or a catch-up),
each with the cursor it has committed

Revision ID: 0012
Revises: 0013
Create Date: 2026-12-18 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "imports",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("connection_id", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("entity", sa.String(length=32), nullable=True),
        sa.Column("page", sa.Integer(), nullable=False),
        sa.Column("bound", sa.BigInteger(), nullable=True),
        sa.Column("seen", sa.JSON(), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("pages", sa.JSON(), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_imports")),
    )
    op.create_index(
        "ix_imports_connection_kind_state", "imports", ["connection_id", "kind", "state"]
    )
    op.create_index("ix_imports_owner_created", "imports", ["owner", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_imports_owner_created", table_name="imports")
    op.drop_index("ix_imports_connection_kind_state", table_name="imports")
    op.drop_table("imports")
