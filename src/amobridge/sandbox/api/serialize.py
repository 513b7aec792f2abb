"""amoCRM's JSON shapes for the sandbox's entities (§5.2), and webhook snapshots (§8.2).

Plain dicts, no models: ``GET /api/v4/leads/{id}`` must stay cheap. Links are absolute, rooted at
the request's own ``scheme://host`` (``base``).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from amobridge.sandbox.state import (
    Account,
    Company,
    Contact,
    CustomField,
    Entity,
    EntityType,
    Lead,
    Note,
    Pipeline,
    Status,
    Tag,
    User,
)

API = "/api/v4"


def href(base: str, path: str) -> dict[str, dict[str, str]]:
    return {"self": {"href": f"{base}{API}/{path}"}}


def tag_json(tag: Tag) -> dict[str, Any]:
    return {"id": tag.id, "name": tag.name, "color": tag.color}


def _tags(account: Account, entity_type: EntityType, tag_ids: list[int]) -> list[dict[str, Any]]:
    if not tag_ids:
        return []
    known = account.tags[entity_type]
    return [tag_json(known[t]) for t in tag_ids if t in known]


def _live(ids: list[int], entities: dict[int, Any]) -> list[int]:
    return [i for i in ids if i in entities and not entities[i].is_deleted]


def _common(account: Account, entity: Entity, base: str, path: str) -> dict[str, Any]:
    return {
        "id": entity.id,
        "name": entity.name,
        "responsible_user_id": entity.responsible_user_id,
        "group_id": entity.group_id,
        "created_by": entity.created_by,
        "updated_by": entity.updated_by,
        "created_at": entity.created_at,
        "updated_at": entity.updated_at,
        "closest_task_at": entity.closest_task_at,
        "is_deleted": entity.is_deleted,
        "custom_fields_values": entity.custom_fields_values,
        "account_id": account.id,
        "_links": href(base, f"{path}/{entity.id}"),
    }


def lead_json(
    account: Account, lead: Lead, base: str, with_: Collection[str] = ()
) -> dict[str, Any]:
    """A lead as ``GET /api/v4/leads/{id}`` shows it; ``with=contacts`` adds its contacts."""
    body = _common(account, lead, base, "leads")
    body["price"] = lead.price
    body["status_id"] = lead.status_id
    body["pipeline_id"] = lead.pipeline_id
    body["loss_reason_id"] = lead.loss_reason_id
    body["closed_at"] = lead.closed_at
    body["score"] = lead.score
    body["labor_cost"] = lead.labor_cost
    companies = (
        [{"id": lead.company_id, "_links": href(base, f"companies/{lead.company_id}")}]
        if lead.company_id is not None and _live([lead.company_id], account.companies)
        else []
    )
    embedded: dict[str, Any] = {
        "tags": _tags(account, "leads", lead.tag_ids),
        "companies": companies,
    }
    if "contacts" in with_:
        contact_ids = _live(lead.contact_ids, account.contacts)
        main = contact_ids[0] if contact_ids else None
        embedded["contacts"] = [
            {"id": c, "is_main": c == main, "_links": href(base, f"contacts/{c}")}
            for c in contact_ids
        ]
    body["_embedded"] = embedded
    return body


def contact_json(
    account: Account, contact: Contact, base: str, with_: Collection[str] = ()
) -> dict[str, Any]:
    """A contact; ``with=leads`` adds its leads."""
    body = _common(account, contact, base, "contacts")
    body["first_name"] = contact.first_name
    body["last_name"] = contact.last_name
    body["is_unsorted"] = contact.is_unsorted
    companies = (
        [{"id": contact.company_id, "_links": href(base, f"companies/{contact.company_id}")}]
        if contact.company_id is not None and _live([contact.company_id], account.companies)
        else []
    )
    embedded: dict[str, Any] = {
        "tags": _tags(account, "contacts", contact.tag_ids),
        "companies": companies,
    }
    if "leads" in with_:
        embedded["leads"] = [
            {"id": i, "_links": href(base, f"leads/{i}")}
            for i in _live(contact.lead_ids, account.leads)
        ]
    body["_embedded"] = embedded
    return body


def company_json(
    account: Account, company: Company, base: str, with_: Collection[str] = ()
) -> dict[str, Any]:
    """A company; ``with=leads`` and ``with=contacts`` add its links."""
    body = _common(account, company, base, "companies")
    embedded: dict[str, Any] = {"tags": _tags(account, "companies", company.tag_ids)}
    if "leads" in with_:
        embedded["leads"] = [
            {"id": i, "_links": href(base, f"leads/{i}")}
            for i in _live(company.lead_ids, account.leads)
        ]
    if "contacts" in with_:
        embedded["contacts"] = [
            {"id": i, "_links": href(base, f"contacts/{i}")}
            for i in _live(company.contact_ids, account.contacts)
        ]
    body["_embedded"] = embedded
    return body


def entity_json(
    account: Account, entity_type: EntityType, entity: Any, base: str, with_: Collection[str] = ()
) -> dict[str, Any]:
    if entity_type == "leads":
        return lead_json(account, entity, base, with_)
    if entity_type == "contacts":
        return contact_json(account, entity, base, with_)
    return company_json(account, entity, base, with_)


# --- account data ------------------------------------------------------------------------------

_FULL_RIGHTS = {"view": "A", "edit": "A", "add": "A", "delete": "A", "export": "A"}


def user_json(user: User, base: str) -> dict[str, Any]:
    return {
        "id": user.id,
        "name": user.name,
        "email": user.email,
        "lang": user.lang,
        "rights": {
            "leads": dict(_FULL_RIGHTS),
            "contacts": dict(_FULL_RIGHTS),
            "companies": dict(_FULL_RIGHTS),
            "tasks": {"edit": "A", "delete": "A"},
            "mail_access": True,
            "catalog_access": True,
            "files_access": True,
            "status_rights": [],
            "catalog_rights": None,
            "custom_fields_rights": None,
            "oper_day_reports_view_access": False,
            "oper_day_user_tracking": False,
            "is_admin": user.is_admin,
            "is_free": False,
            "is_active": True,
            "group_id": None,
            "role_id": None,
        },
        "_links": href(base, f"users/{user.id}"),
    }


def status_json(account: Account, status: Status, base: str) -> dict[str, Any]:
    return {
        "id": status.id,
        "name": status.name,
        "sort": status.sort,
        "is_editable": status.is_editable,
        "pipeline_id": status.pipeline_id,
        "color": status.color,
        "type": status.type,
        "account_id": account.id,
        "_links": href(base, f"leads/pipelines/{status.pipeline_id}/statuses/{status.id}"),
    }


def pipeline_json(account: Account, pipeline: Pipeline, base: str) -> dict[str, Any]:
    return {
        "id": pipeline.id,
        "name": pipeline.name,
        "sort": pipeline.sort,
        "is_main": pipeline.is_main,
        "is_unsorted_on": pipeline.is_unsorted_on,
        "is_archive": pipeline.is_archive,
        "account_id": account.id,
        "_links": href(base, f"leads/pipelines/{pipeline.id}"),
        "_embedded": {"statuses": [status_json(account, s, base) for s in pipeline.statuses]},
    }


def custom_field_json(account: Account, cf: CustomField, base: str) -> dict[str, Any]:
    return {
        "id": cf.id,
        "name": cf.name,
        "type": cf.type,
        "account_id": account.id,
        "code": cf.code,
        "sort": cf.sort,
        "is_api_only": cf.is_api_only,
        "enums": (
            [{"id": e.id, "value": e.value, "sort": e.sort} for e in cf.enums]
            if cf.enums is not None
            else None
        ),
        "group_id": None,
        "required_statuses": [],
        "is_deletable": cf.code is None,
        "is_predefined": cf.code is not None,
        "entity_type": cf.entity_type,
        "remind": None,
        "settings": None,
        "_links": href(base, f"{cf.entity_type}/custom_fields/{cf.id}"),
    }


def note_json(account: Account, note: Note, base: str) -> dict[str, Any]:
    return {
        "id": note.id,
        "entity_id": note.entity_id,
        "created_by": note.created_by,
        "updated_by": note.updated_by,
        "created_at": note.created_at,
        "updated_at": note.updated_at,
        "responsible_user_id": note.responsible_user_id,
        "group_id": note.group_id,
        "note_type": note.note_type,
        "params": note.params,
        "account_id": account.id,
        "_links": href(base, f"{note.entity_type}/{note.entity_id}/notes/{note.id}"),
    }


# --- webhooks ----------------------------------------------------------------------------------


def webhook_snapshot(account: Account, entity_type: EntityType, entity: Any) -> dict[str, Any]:
    """The entity as amoCRM's webhooks describe it (§8.2), for :class:`EntityChange.snapshot`.

    Values keep their Python types (the dispatcher turns every one into a string). Keys:

    - all: ``id, name, responsible_user_id, created_user_id, modified_user_id, date_create,
      last_modified, created_at, updated_at, account_id, group_id``; ``custom_fields``: a list of
      ``{"id", "name", "code"? (only when the field has a code: PHONE, EMAIL, POSITION, …),
      "values": [{"value", "enum"? (the enum id, for select/multitext fields)}]}``; ``tags``: a
      list of ``{"id", "name"}``. Both lists may be empty.
    - leads: ``price, status_id, pipeline_id`` (plus ``closed_at`` when closed).
    - contacts: ``first_name, last_name, type: "contact", company_name, linked_company_id``
      (the last two only when linked to a company) and ``linked_leads_id``: a list of lead ids
      (amoCRM sends ``linked_leads_id[{id}][ID]={id}``).
    - companies: ``type: "company"``, ``linked_leads_id``.
    """
    snapshot: dict[str, Any] = {
        "id": entity.id,
        "name": entity.name,
        "responsible_user_id": entity.responsible_user_id,
        "created_user_id": entity.created_by,
        "modified_user_id": entity.updated_by,
        "date_create": entity.created_at,
        "last_modified": entity.updated_at,
        "created_at": entity.created_at,
        "updated_at": entity.updated_at,
        "account_id": account.id,
        "group_id": entity.group_id,
        "custom_fields": _webhook_fields(entity.custom_fields_values),
        "tags": [
            {"id": t["id"], "name": t["name"]} for t in _tags(account, entity_type, entity.tag_ids)
        ],
    }
    if isinstance(entity, Lead):
        snapshot["price"] = entity.price
        snapshot["status_id"] = entity.status_id
        snapshot["pipeline_id"] = entity.pipeline_id
        if entity.closed_at is not None:
            snapshot["closed_at"] = entity.closed_at
    elif isinstance(entity, Contact):
        snapshot["first_name"] = entity.first_name
        snapshot["last_name"] = entity.last_name
        snapshot["type"] = "contact"
        company = account.companies.get(entity.company_id) if entity.company_id else None
        if company is not None and not company.is_deleted:
            snapshot["linked_company_id"] = company.id
            snapshot["company_name"] = company.name
        snapshot["linked_leads_id"] = _live(entity.lead_ids, account.leads)
    elif isinstance(entity, Company):
        snapshot["type"] = "company"
        snapshot["linked_leads_id"] = _live(entity.lead_ids, account.leads)
    return snapshot


def _webhook_fields(values: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    fields: list[dict[str, Any]] = []
    for item in values or ():
        out: dict[str, Any] = {"id": item["field_id"], "name": item["field_name"]}
        if item.get("field_code"):
            out["code"] = item["field_code"]
        out["values"] = [
            {"value": v["value"], "enum": v["enum_id"]}
            if v.get("enum_id") is not None
            else {"value": v["value"]}
            for v in item["values"]
        ]
        fields.append(out)
    return fields
