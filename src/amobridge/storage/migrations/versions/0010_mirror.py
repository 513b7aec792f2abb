"""the lead mirror: leads, contacts, links, idempotency keys, catalogue

the lead mirror: leads, contacts, their links, POST idempotency keys and the per-connection
catalogue of pipelines and custom fields

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-16 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def _times() -> list[sa.Column[object]]:
    return [
        sa.Column("amo_updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("local_updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
    ]


def _sync_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("external_id", sa.String(length=255), nullable=True),
        sa.Column("sync_state", sa.String(length=16), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("create_key", sa.String(length=64), nullable=True),
        sa.Column("pushed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("dirty", sa.JSON(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "leads",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("connection_id", sa.String(length=32), nullable=False),
        sa.Column("amo_id", sa.BigInteger(), nullable=True),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("name_folded", sa.Text(), nullable=True),
        sa.Column("price", sa.BigInteger(), nullable=True),
        sa.Column("pipeline_id", sa.BigInteger(), nullable=True),
        sa.Column("status_id", sa.BigInteger(), nullable=True),
        sa.Column("responsible_user_id", sa.BigInteger(), nullable=True),
        sa.Column("custom_fields", sa.JSON(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        *_sync_columns(),
        sa.Column("unresolved", sa.JSON(), nullable=True),
        *_times(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_leads")),
    )
    op.create_index("ix_leads_owner_external_id", "leads", ["owner", "external_id"], unique=True)
    op.create_index("ix_leads_connection_amo_id", "leads", ["connection_id", "amo_id"], unique=True)
    op.create_index("ix_leads_owner_created", "leads", ["owner", "created_at", "id"])
    op.create_index("ix_leads_owner_updated", "leads", ["owner", "updated_at", "id"])
    op.create_index("ix_leads_owner_stage", "leads", ["owner", "pipeline_id", "status_id"])

    op.create_table(
        "contacts",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("connection_id", sa.String(length=32), nullable=False),
        sa.Column("amo_id", sa.BigInteger(), nullable=True),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("name_folded", sa.Text(), nullable=True),
        sa.Column("email", sa.String(length=254), nullable=True),
        sa.Column("phone", sa.String(length=32), nullable=True),
        sa.Column("emails", sa.JSON(), nullable=False),
        sa.Column("phones", sa.JSON(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        *_sync_columns(),
        *_times(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contacts")),
    )
    op.create_index(
        "ix_contacts_owner_external_id", "contacts", ["owner", "external_id"], unique=True
    )
    op.create_index(
        "ix_contacts_connection_amo_id", "contacts", ["connection_id", "amo_id"], unique=True
    )
    op.create_index("ix_contacts_connection_email", "contacts", ["connection_id", "email"])
    op.create_index("ix_contacts_connection_phone", "contacts", ["connection_id", "phone"])
    op.create_index("ix_contacts_owner_created", "contacts", ["owner", "created_at", "id"])

    op.create_table(
        "lead_contacts",
        sa.Column("lead_id", sa.String(length=32), nullable=False),
        sa.Column("contact_id", sa.String(length=32), nullable=False),
        sa.Column("is_main", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["lead_id"],
            ["leads.id"],
            name=op.f("fk_lead_contacts_lead_id_leads"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
            name=op.f("fk_lead_contacts_contact_id_contacts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("lead_id", "contact_id", name=op.f("pk_lead_contacts")),
    )
    op.create_index("ix_lead_contacts_contact_id", "lead_contacts", ["contact_id"])

    op.create_table(
        "idempotency_keys",
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("response", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("owner", "key", name=op.f("pk_idempotency_keys")),
    )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])

    op.create_table(
        "amo_catalogue",
        sa.Column("connection_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("connection_id", "kind", name=op.f("pk_amo_catalogue")),
    )


def downgrade() -> None:
    op.drop_table("amo_catalogue")
    op.drop_index("ix_idempotency_keys_created_at", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    op.drop_index("ix_lead_contacts_contact_id", table_name="lead_contacts")
    op.drop_table("lead_contacts")
    for name in (
        "ix_contacts_owner_created",
        "ix_contacts_connection_phone",
        "ix_contacts_connection_email",
        "ix_contacts_connection_amo_id",
        "ix_contacts_owner_external_id",
    ):
        op.drop_index(name, table_name="contacts")
    op.drop_table("contacts")
    for name in (
        "ix_leads_owner_stage",
        "ix_leads_owner_updated",
        "ix_leads_owner_created",
        "ix_leads_connection_amo_id",
        "ix_leads_owner_external_id",
    ):
        op.drop_index(name, table_name="leads")
    op.drop_table("leads")
