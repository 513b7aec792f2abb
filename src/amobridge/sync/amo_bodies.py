"""Mirror rows as amoCRM request bodies (the SDK's input models), and amoCRM's entities back into
rows: the two directions of the push, with nothing else in them."""

from __future__ import annotations

from typing import Any

from amobridge.amo.models.contacts import Contact as AmoContact
from amobridge.amo.models.contacts import ContactCreate, ContactUpdate
from amobridge.amo.models.custom_fields import (
    CustomFieldClear,
    CustomFieldValue,
    email_field,
    field_value,
    phone_field,
)
from amobridge.amo.models.leads import ComplexLeadCreate, LeadUpdate
from amobridge.amo.phones import normalize_email, normalize_phone
from amobridge.storage.tables import Contact, Lead


def _field(item: dict[str, Any]) -> CustomFieldValue:
    return CustomFieldValue.model_validate({"field_id": item["field_id"], "values": item["values"]})


def marker_value(field_id: int, key: str) -> CustomFieldValue:
    return field_value(field_id, key)


def contact_fields(contact: Contact) -> list[CustomFieldValue]:
    found: list[CustomFieldValue] = []
    if contact.emails:
        found.append(email_field(*contact.emails))
    if contact.phones:
        found.append(phone_field(*contact.phones))
    return found


def new_contact(contact: Contact, *, marker: CustomFieldValue | None = None) -> ContactCreate:
    fields = contact_fields(contact)
    if marker is not None:
        fields.append(marker)
    body: dict[str, Any] = {"name": contact.name or contact.email or contact.phone or ""}
    if fields:
        body["custom_fields_values"] = fields
    if contact.tags:
        body["tags"] = list(contact.tags)
    if contact.create_key and marker is not None:
        body["request_id"] = contact.create_key
    return ContactCreate.model_validate(body)


def complex_lead(
    lead: Lead,
    *,
    key: str,
    marker: CustomFieldValue,
    contact: Contact | None,
    contact_amo_id: int | None,
) -> ComplexLeadCreate:
    """``lead`` for ``POST /leads/complex``: its contact created with it (``contact``) or an
    existing one linked by id (``contact_amo_id``)."""
    body: dict[str, Any] = {
        "request_id": key,
        "custom_fields_values": [*(_field(item) for item in lead.custom_fields or []), marker],
    }
    for name in ("name", "price", "pipeline_id", "status_id", "responsible_user_id"):
        value = getattr(lead, name)
        if value is not None:
            body[name] = value
    if lead.tags:
        body["tags"] = list(lead.tags)
    if contact_amo_id is not None:
        body["contact_id"] = contact_amo_id
    elif contact is not None:
        body["contact"] = new_contact(contact)
    return ComplexLeadCreate.model_validate(body)


def lead_changes(lead: Lead, dirty: dict[str, Any]) -> LeadUpdate | None:
    """The PATCH of ``lead``'s changed fields (``dirty``), or None when nothing is to send."""
    assert lead.amo_id is not None
    body: dict[str, Any] = {}
    for name in ("name", "price", "responsible_user_id"):
        if name in dirty:
            body[name] = getattr(lead, name)
    if ("pipeline_id" in dirty or "status_id" in dirty) and lead.status_id is not None:
        body["status_id"] = lead.status_id
        if lead.pipeline_id is not None:
            body["pipeline_id"] = lead.pipeline_id
    elif "pipeline_id" in dirty and lead.pipeline_id is not None:
        body["pipeline_id"] = lead.pipeline_id
    current = {item["field_id"]: item for item in lead.custom_fields or []}
    fields: list[CustomFieldValue | CustomFieldClear] = []
    for name in dirty:
        if not name.startswith("cf:"):
            continue
        field_id = int(name[3:])
        item = current.get(field_id)
        fields.append(_field(item) if item is not None else CustomFieldClear(field_id=field_id))
    if fields:
        body["custom_fields_values"] = fields
    if "tags" in dirty:
        body["tags"] = list(lead.tags or [])
    if not body:
        return None
    return LeadUpdate.model_validate({"id": lead.amo_id, **body})


def contact_changes(contact: Contact, dirty: dict[str, Any]) -> ContactUpdate | None:
    assert contact.amo_id is not None
    body: dict[str, Any] = {}
    if "name" in dirty and contact.name:
        body["name"] = contact.name
    fields: list[CustomFieldValue] = []
    if "emails" in dirty and contact.emails:
        fields.append(email_field(*contact.emails))
    if "phones" in dirty and contact.phones:
        fields.append(phone_field(*contact.phones))
    if fields:
        body["custom_fields_values"] = fields
    if "tags" in dirty:
        body["tags"] = list(contact.tags or [])
    if not body:
        return None
    return ContactUpdate.model_validate({"id": contact.amo_id, **body})


def absorb_contact(contact: Contact, found: AmoContact, region: str) -> None:
    """``contact`` is ``found`` in amoCRM: take its id, and its e-mails and phones after ours."""
    contact.amo_id = found.id
    emails = list(contact.emails or [])
    for value in found.emails:
        email = normalize_email(value)
        if email and email not in emails:
            emails.append(email)
    phones = list(contact.phones or [])
    for value in found.phones:
        phone = normalize_phone(value, region)
        if phone and phone not in phones:
            phones.append(phone)
    contact.emails, contact.phones = emails, phones
    contact.email = emails[0] if emails else None
    contact.phone = phones[0] if phones else None
    if not contact.name and found.name:
        contact.name = found.name
