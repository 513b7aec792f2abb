"""events to the host app: the outbox, endpoints, deliveries, delivery log

events to the host app: the outbox of events, their endpoints, one delivery per event and
endpoint (sent by notify.deliver jobs) and the delivery log; the host_notifications queue of
the reauth callback is moved into it and dropped

Revision ID: 0013
Revises: 0011
Create Date: 2026-12-18 12:00:00
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0011"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIME = sa.DateTime(timezone=True)
# The endpoint of AMOBRIDGE_HOOKS__REAUTH_CALLBACK_URL (see amobridge.notify.service).
LEGACY = "legacy-reauth"
DELIVER = "notify.deliver"
MAX_ATTEMPTS = 8

_notifications = sa.table(
    "host_notifications",
    sa.column("id", _ID),
    sa.column("event", sa.String()),
    sa.column("owner", sa.String()),
    sa.column("connection_id", sa.String()),
    sa.column("payload", sa.JSON()),
    sa.column("status", sa.String()),
    sa.column("attempts", sa.Integer()),
    sa.column("next_attempt_at", _TIME),
    sa.column("last_error", sa.Text()),
    sa.column("created_at", _TIME),
    sa.column("delivered_at", _TIME),
)
_events = sa.table(
    "events",
    sa.column("id", sa.String()),
    sa.column("type", sa.String()),
    sa.column("owner", sa.String()),
    sa.column("connection_id", sa.String()),
    sa.column("data", sa.JSON()),
    sa.column("created_at", _TIME),
)
_deliveries = sa.table(
    "event_deliveries",
    sa.column("id", _ID),
    sa.column("event_id", sa.String()),
    sa.column("event_type", sa.String()),
    sa.column("owner", sa.String()),
    sa.column("subscription_id", sa.String()),
    sa.column("url", sa.Text()),
    sa.column("state", sa.String()),
    sa.column("attempts", sa.Integer()),
    sa.column("job_id", _ID),
    sa.column("last_error", sa.Text()),
    sa.column("next_attempt_at", _TIME),
    sa.column("created_at", _TIME),
    sa.column("updated_at", _TIME),
    sa.column("delivered_at", _TIME),
)
_jobs = sa.table(
    "jobs",
    sa.column("id", _ID),
    sa.column("kind", sa.String()),
    sa.column("owner", sa.String()),
    sa.column("payload", sa.JSON()),
    sa.column("state", sa.String()),
    sa.column("attempts", sa.Integer()),
    sa.column("max_attempts", sa.Integer()),
    sa.column("run_after", _TIME),
    sa.column("turn", sa.BigInteger()),
    sa.column("dedup_key", sa.String()),
    sa.column("idempotency_key", sa.String()),
    sa.column("created_at", _TIME),
    sa.column("updated_at", _TIME),
)


def _create_tables() -> None:
    op.create_table(
        "event_subscriptions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret_enc", sa.Text(), nullable=False),
        sa.Column("types", sa.JSON(), nullable=True),
        sa.Column("description", sa.String(length=255), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_subscriptions")),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=True),
        sa.Column("connection_id", sa.String(length=32), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index("ix_events_created_at", "events", ["created_at"])
    op.create_table(
        "event_deliveries",
        sa.Column("id", _ID, nullable=False),
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=True),
        sa.Column("subscription_id", sa.String(length=32), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", _TIME, nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.Column("delivered_at", _TIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["events.id"],
            name=op.f("fk_event_deliveries_event_id_events"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_deliveries")),
    )
    op.create_index("ix_event_deliveries_event_id", "event_deliveries", ["event_id"])
    op.create_index("ix_event_deliveries_state_id", "event_deliveries", ["state", "id"])
    op.create_index("ix_event_deliveries_event_type_id", "event_deliveries", ["event_type", "id"])
    op.create_index(
        "ix_event_deliveries_subscription_id_state",
        "event_deliveries",
        ["subscription_id", "state"],
    )
    op.create_table(
        "event_delivery_attempts",
        sa.Column("id", _ID, nullable=False),
        sa.Column("delivery_id", _ID, nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("started_at", _TIME, nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["event_deliveries.id"],
            name=op.f("fk_event_delivery_attempts_delivery_id_event_deliveries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_delivery_attempts")),
    )
    op.create_index(
        "ix_event_delivery_attempts_delivery_id_id",
        "event_delivery_attempts",
        ["delivery_id", "id"],
    )


def _move_notifications() -> None:
    """Each queued reauth callback becomes an event with a delivery to the legacy endpoint; the
    pending ones get a delivery job, so none is dropped on the way."""
    bind = op.get_bind()
    now = datetime.now(UTC)
    states = {"pending": "pending", "delivered": "delivered", "failed": "failed"}
    rows = bind.execute(sa.select(_notifications).order_by(_notifications.c.id)).mappings().all()
    for row in rows:
        event_id = "evt_" + uuid.uuid4().hex
        payload: dict[str, Any] = dict(row["payload"] or {})
        payload.pop("event", None)
        bind.execute(
            _events.insert().values(
                id=event_id,
                type=row["event"],
                owner=row["owner"],
                connection_id=row["connection_id"],
                data=payload,
                created_at=row["created_at"],
            )
        )
        state = states.get(row["status"], "failed")
        delivery_id = bind.execute(
            _deliveries.insert()
            .values(
                event_id=event_id,
                event_type=row["event"],
                owner=row["owner"],
                subscription_id=LEGACY,
                url="",
                state=state,
                attempts=row["attempts"],
                last_error=row["last_error"],
                next_attempt_at=row["next_attempt_at"] if state == "pending" else None,
                created_at=row["created_at"],
                updated_at=now,
                delivered_at=row["delivered_at"],
            )
            .returning(_deliveries.c.id)
        ).scalar_one()
        if state != "pending":
            continue
        job_id = bind.execute(
            _jobs.insert()
            .values(
                kind=DELIVER,
                owner=row["owner"],
                payload={"delivery_id": delivery_id},
                state="pending",
                attempts=0,
                max_attempts=MAX_ATTEMPTS,
                run_after=row["next_attempt_at"] or now,
                turn=0,
                dedup_key=f"{DELIVER}:{delivery_id}",
                idempotency_key=uuid.uuid4().hex,
                created_at=now,
                updated_at=now,
            )
            .returning(_jobs.c.id)
        ).scalar_one()
        bind.execute(
            _deliveries.update().where(_deliveries.c.id == delivery_id).values(job_id=job_id)
        )


def upgrade() -> None:
    _create_tables()
    _move_notifications()
    op.drop_index("ix_host_notifications_status_next", table_name="host_notifications")
    op.drop_table("host_notifications")


def downgrade() -> None:
    op.create_table(
        "host_notifications",
        sa.Column("id", _ID, nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=True),
        sa.Column("connection_id", sa.String(length=32), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _TIME, nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("delivered_at", _TIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_host_notifications")),
    )
    op.create_index(
        "ix_host_notifications_status_next", "host_notifications", ["status", "next_attempt_at"]
    )
    # The reauth callbacks still waiting go back to the old queue; other events have no home
    # there and go with the tables.
    bind = op.get_bind()
    now = datetime.now(UTC)
    waiting = bind.execute(
        sa.select(_deliveries, _events.c.data, _events.c.connection_id)
        .join(_events, _events.c.id == _deliveries.c.event_id)
        .where(_deliveries.c.subscription_id == LEGACY, _deliveries.c.state == "pending")
    ).mappings()
    for row in waiting.all():
        bind.execute(
            _notifications.insert().values(
                event=row["event_type"],
                owner=row["owner"],
                connection_id=row["connection_id"],
                payload={"event": row["event_type"], **dict(row["data"] or {})},
                status="pending",
                attempts=row["attempts"],
                next_attempt_at=row["next_attempt_at"] or now,
                last_error=row["last_error"],
                created_at=row["created_at"],
            )
        )
    bind.execute(_jobs.delete().where(_jobs.c.kind == DELIVER))
    op.drop_index("ix_event_delivery_attempts_delivery_id_id", "event_delivery_attempts")
    op.drop_table("event_delivery_attempts")
    op.drop_index("ix_event_deliveries_subscription_id_state", "event_deliveries")
    op.drop_index("ix_event_deliveries_event_type_id", "event_deliveries")
    op.drop_index("ix_event_deliveries_state_id", "event_deliveries")
    op.drop_index("ix_event_deliveries_event_id", "event_deliveries")
    op.drop_table("event_deliveries")
    op.drop_index("ix_events_created_at", "events")
    op.drop_table("events")
    op.drop_table("event_subscriptions")
