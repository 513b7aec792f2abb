"""rate limits: a pace lease per key

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 09:00:00.000000

One process at a time paces a key (holds its lease) in memory; the row keeps who holds it, until
when (database clock), whether another process waits for it, and the end times of the key's latest
slots so the next holder continues the window. ``grants`` keeps its name and now holds those slot
end times (older rows hold grant times: read as end times they only make the next holder wait a
little longer, never less).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rate_limits") as batch:
        batch.add_column(sa.Column("lease_holder", sa.String(length=64), nullable=True))
        batch.add_column(
            sa.Column("lease_until", sa.Float(), nullable=False, server_default=sa.text("0"))
        )
        batch.add_column(
            sa.Column("wanted_until", sa.Float(), nullable=False, server_default=sa.text("0"))
        )
        # Each keeper tick asks which of *its* leases another process waits for.
        batch.create_index("ix_rate_limits_lease_holder", ["lease_holder"])


def downgrade() -> None:
    with op.batch_alter_table("rate_limits") as batch:
        batch.drop_index("ix_rate_limits_lease_holder")
        batch.drop_column("wanted_until")
        batch.drop_column("lease_until")
        batch.drop_column("lease_holder")
