"""Mirror rows as the API answers them (``schemas.LeadOut`` / ``ContactOut``), and the small
rules every writer of a row follows (a local change bumps ``version`` and marks its fields dirty).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from amobridge.amo.models.pipelines import normalise_name
from amobridge.storage.tables import Contact, Lead, utcnow
from amobridge.sync.catalogue import Catalogue


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def fold(name: str | None) -> str | None:
    """How names are searched: casefolded, spaces collapsed, ё read as е."""
    return normalise_name(name) if name else None


def mark_dirty(row: Lead | Contact, fields: Iterable[str]) -> None:
    """A local change of ``fields``: pending until a push has sent this version of them."""
    names = list(fields)
    if not names:
        return
    row.version = (row.version or 0) + 1
    dirty = dict(row.dirty or {})
    for name in names:
        dirty[name] = row.version
    row.dirty = dirty
    row.sync_state = "pending"
    row.last_error = None
    row.local_updated_at = utcnow()


def contact_summary(contact: Contact | None) -> dict[str, Any] | None:
    if contact is None:
        return None
    return {
        "id": contact.id,
        "amo_id": contact.amo_id,
        "name": contact.name,
        "email": contact.email,
        "phone": contact.phone,
    }


def lead_out(
    lead: Lead,
    *,
    contact: Contact | None,
    catalogue: Catalogue | None,
    connection: str,
) -> dict[str, Any]:
    pipeline = catalogue.pipeline_by_id(lead.pipeline_id) if catalogue is not None else None
    stage = (
        next((s for s in pipeline.statuses if s.id == lead.status_id), None) if pipeline else None
    )
    return {
        "id": lead.id,
        "owner": lead.owner,
        "state": lead.sync_state,
        "amo_id": lead.amo_id,
        "connection": connection,
        "name": lead.name,
        "price": lead.price,
        "pipeline_id": lead.pipeline_id,
        "pipeline": pipeline.name if pipeline else None,
        "stage_id": lead.status_id,
        "stage": stage.name if stage else None,
        "responsible_user_id": lead.responsible_user_id,
        "custom_fields": [
            {
                "field_id": item["field_id"],
                "name": item.get("field_name"),
                "values": item.get("values") or [],
            }
            for item in lead.custom_fields or []
        ],
        "tags": list(lead.tags or []),
        "external_id": lead.external_id,
        "contact": contact_summary(contact),
        "unresolved": lead.unresolved or None,
        "last_error": lead.last_error,
        "created_at": iso(lead.created_at),
        "updated_at": iso(lead.updated_at),
        "amo_updated_at": iso(lead.amo_updated_at),
        "synced_at": iso(lead.synced_at),
    }


def contact_out(contact: Contact, *, connection: str) -> dict[str, Any]:
    return {
        "id": contact.id,
        "owner": contact.owner,
        "state": contact.sync_state,
        "amo_id": contact.amo_id,
        "connection": connection,
        "name": contact.name,
        "email": contact.email,
        "phone": contact.phone,
        "emails": list(contact.emails or []),
        "phones": list(contact.phones or []),
        "tags": list(contact.tags or []),
        "external_id": contact.external_id,
        "last_error": contact.last_error,
        "created_at": iso(contact.created_at),
        "updated_at": iso(contact.updated_at),
        "amo_updated_at": iso(contact.amo_updated_at),
        "synced_at": iso(contact.synced_at),
    }
