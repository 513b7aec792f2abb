"""the webhook inbox, each connection's subscription, hashed URL secrets

the webhook inbox: deliveries stored before they are answered, what amobridge knows of each
connection's subscription, and the connections' webhook URL secret kept as a SHA-256 (and
encrypted) instead of in plain text

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-17 12:00:00
"""

from __future__ import annotations

import hashlib
import secrets

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_connections = sa.table(
    "connections",
    sa.column("id", sa.String()),
    sa.column("webhook_secret", sa.String()),
    sa.column("webhook_secret_hash", sa.String()),
)


def upgrade() -> None:
    with op.batch_alter_table("connections") as batch:
        batch.add_column(sa.Column("webhook_secret_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("webhook_secret_enc", sa.Text(), nullable=True))
    # The plain secrets become their SHA-256: a URL given out with one keeps working. None was
    # ever given out (nothing subscribed a webhook before this revision), and the plain value
    # cannot be encrypted here (the keys are the service's, not the migration's): the first
    # subscription of such a connection makes a new secret.
    bind = op.get_bind()
    rows = bind.execute(sa.select(_connections.c.id, _connections.c.webhook_secret)).all()
    for connection_id, secret in rows:
        if secret:
            digest = hashlib.sha256(secret.encode()).hexdigest()
            bind.execute(
                _connections.update()
                .where(_connections.c.id == connection_id)
                .values(webhook_secret_hash=digest)
            )
    with op.batch_alter_table("connections") as batch:
        batch.drop_constraint("uq_connections_webhook_secret", type_="unique")
        batch.drop_column("webhook_secret")
        batch.create_unique_constraint(
            "uq_connections_webhook_secret_hash", ["webhook_secret_hash"]
        )

    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("connection_id", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=True),
        sa.Column("content_type", sa.String(length=255), nullable=True),
        sa.Column("headers", sa.JSON(), nullable=True),
        sa.Column("body_hash", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("duplicate_of", sa.BigInteger(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
    )
    op.create_index(
        "ix_webhook_deliveries_connection_hash",
        "webhook_deliveries",
        ["connection_id", "body_hash"],
    )
    op.create_index("ix_webhook_deliveries_owner_id", "webhook_deliveries", ["owner", "id"])
    op.create_index("ix_webhook_deliveries_state_id", "webhook_deliveries", ["state", "id"])
    op.create_index("ix_webhook_deliveries_received_at", "webhook_deliveries", ["received_at"])

    op.create_table(
        "webhook_subscriptions",
        sa.Column("connection_id", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("amo_webhook_id", sa.BigInteger(), nullable=True),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("subscribed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("restored_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("restores", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("unsubscribe_host", sa.String(length=255), nullable=True),
        sa.Column("unsubscribe_token_enc", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("connection_id", name=op.f("pk_webhook_subscriptions")),
    )
    op.create_index(
        "ix_webhook_subscriptions_state_checked",
        "webhook_subscriptions",
        ["state", "checked_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_subscriptions_state_checked", table_name="webhook_subscriptions")
    op.drop_table("webhook_subscriptions")
    op.drop_index("ix_webhook_deliveries_received_at", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_state_id", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_owner_id", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_connection_hash", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    # A hash cannot be turned back into its secret: every connection gets a new plain one (the
    # webhooks subscribed with the old ones stop being recognised).
    with op.batch_alter_table("connections") as batch:
        batch.add_column(sa.Column("webhook_secret", sa.String(length=64), nullable=True))
    bind = op.get_bind()
    for (connection_id,) in bind.execute(sa.select(_connections.c.id)).all():
        bind.execute(
            _connections.update()
            .where(_connections.c.id == connection_id)
            .values(webhook_secret=secrets.token_hex(16))
        )
    with op.batch_alter_table("connections") as batch:
        batch.drop_constraint("uq_connections_webhook_secret_hash", type_="unique")
        batch.drop_column("webhook_secret_enc")
        batch.drop_column("webhook_secret_hash")
        batch.alter_column("webhook_secret", existing_type=sa.String(length=64), nullable=False)
        batch.create_unique_constraint("uq_connections_webhook_secret", ["webhook_secret"])
