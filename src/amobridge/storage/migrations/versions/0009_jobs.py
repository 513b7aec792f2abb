"""the durable job queue: outbound work queued in the same transaction as the change it comes from

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-15 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_ACTIVE_JOB = sa.text("state IN ('pending', 'running', 'paused')")


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=True),
        sa.Column("connection_id", sa.String(length=32), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("run_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("turn", sa.BigInteger(), nullable=False),
        sa.Column("ordering_key", sa.String(length=255), nullable=True),
        sa.Column("dedup_key", sa.String(length=255), nullable=True),
        sa.Column("idempotency_key", sa.String(length=64), nullable=False),
        sa.Column("locked_by", sa.String(length=64), nullable=True),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("paused_reason", sa.String(length=64), nullable=True),
        sa.Column("paused_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_jobs_idempotency_key")),
    )
    op.create_index("ix_jobs_state_turn", "jobs", ["state", "turn", "id"])
    op.create_index("ix_jobs_connection_state", "jobs", ["connection_id", "state", "turn"])
    op.create_index("ix_jobs_ordering_key_state", "jobs", ["ordering_key", "state", "id"])
    op.create_index("ix_jobs_owner_state", "jobs", ["owner", "state", "id"])
    op.create_index("ix_jobs_state_run_after", "jobs", ["state", "run_after"])
    op.create_index(
        "uq_jobs_dedup_key_active",
        "jobs",
        ["dedup_key"],
        unique=True,
        postgresql_where=_ACTIVE_JOB,
        sqlite_where=_ACTIVE_JOB,
    )


def downgrade() -> None:
    op.drop_index("uq_jobs_dedup_key_active", table_name="jobs")
    op.drop_index("ix_jobs_state_run_after", table_name="jobs")
    op.drop_index("ix_jobs_owner_state", table_name="jobs")
    op.drop_index("ix_jobs_ordering_key_state", table_name="jobs")
    op.drop_index("ix_jobs_connection_state", table_name="jobs")
    op.drop_index("ix_jobs_state_turn", table_name="jobs")
    op.drop_table("jobs")
