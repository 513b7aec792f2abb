"""uninstall hook signatures already acted on (a replayed hook is refused)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-10 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "used_hook_signatures",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("client_uuid", sa.String(length=128), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_used_hook_signatures")),
    )
    op.create_index(
        "ix_used_hook_signatures_client_uuid_account",
        "used_hook_signatures",
        ["client_uuid", "account_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_used_hook_signatures_client_uuid_account", table_name="used_hook_signatures")
    op.drop_table("used_hook_signatures")
