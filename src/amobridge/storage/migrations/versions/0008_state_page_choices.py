"""what an OAuth state keeps for the pages at its end

what an OAuth state keeps for the pages at its end: the page language the flow started with,
the host app's return URL, and when it connected (a reload of the success page shows it again)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-14 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("oauth_states") as batch:
        batch.add_column(sa.Column("lang", sa.String(length=8), nullable=True))
        batch.add_column(sa.Column("return_url", sa.Text(), nullable=True))
        batch.add_column(sa.Column("succeeded_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("oauth_states") as batch:
        batch.drop_column("succeeded_at")
        batch.drop_column("return_url")
        batch.drop_column("lang")
