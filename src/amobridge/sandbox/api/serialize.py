"""amoCRM's JSON shapes for the sandbox's entities, and their webhook snapshots.

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


def _links(
    base: str, entity_type: EntityType, ids: list[int], entities: dict[int, Any]
) -> list[dict[str, Any]]:
    """``_embedded.{entity_type}``: the live ones of ``ids``, each ``{id, _links}``."""
    return [{"id": i, "_links": href(base, f"{entity_type}/{i}")} for i in _live(ids, entities)]


def _company_links(account: Account, company_id: int | None, base: str) -> list[dict[str, Any]]:
    """``_embedded.companies`` of a lead or contact: its one live company, if any."""
    if company_id is None:
        return []
    return _links(base, "companies", [company_id], account.companies)


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
    embedded: dict[str, Any] = {
        "tags": _tags(account, "leads", lead.tag_ids),
        "companies": _company_links(account, lead.company_id, base),
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
    embedded: dict[str, Any] = {
        "tags": _tags(account, "contacts", contact.tag_ids),
        "companies": _company_links(account, contact.company_id, base),
    }
    if "leads" in with_:
        embedded["leads"] = _links(base, "leads", contact.lead_ids, account.leads)
    body["_embedded"] = embedded
    return body


def company_json(
    account: Account, company: Company, base: str, with_: Collection[str] = ()
) -> dict[str, Any]:
    """A company; ``with=leads`` and ``with=contacts`` add its links."""
    body = _common(account, company, base, "companies")
    embedded: dict[str, Any] = {"tags": _tags(account, "companies", company.tag_ids)}
    if "leads" in with_:
        embedded["leads"] = _links(base, "leads", company.lead_ids, account.leads)
    if "contacts" in with_:
        embedded["contacts"] = _links(base, "contacts", company.contact_ids, account.contacts)
    body["_embedded"] = embedded
    return body


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
    """The entity as amoCRM's webhooks describe it, for :class:`EntityChange.snapshot`.

    Keys come in the order amoCRM's captured bodies use; values keep their Python types and the
    nesting is the webhook's own, so flattening to ``key[sub][0][x]=str(value)`` gives amoCRM's
    form keys (empty lists vanish, None is left out):

    - leads: ``id, name, status_id, price, responsible_user_id, last_modified, modified_user_id,
      created_user_id, date_create, pipeline_id, tags, account_id, custom_fields, created_at,
      updated_at`` (plus ``closed_at`` when closed);
    - contacts: ``id, name, first_name, last_name, responsible_user_id, date_create,
      last_modified, created_user_id, modified_user_id, company_name, linked_company_id`` (the
      last two when linked to a company) ``, tags, account_id, custom_fields, created_at,
      updated_at, type: "contact", linked_leads_id``;
    - companies: as contacts without names/company, ``type: "company"``.

    ``tags`` is ``[{"id", "name"}]``; ``custom_fields`` is ``[{"id", "name", "code"? (when the
    field has one: PHONE, EMAIL, POSITION, …), "values": [{"value", "enum"? (enum id)}]}]``;
    ``linked_leads_id`` is ``{"<lead id>": {"ID": <lead id>}}`` (amoCRM's
    ``linked_leads_id[{id}][ID]={id}``).
    """
    tags = [{"id": t["id"], "name": t["name"]} for t in _tags(account, entity_type, entity.tag_ids)]
    common_tail = {
        "tags": tags,
        "account_id": account.id,
        "custom_fields": _webhook_fields(entity.custom_fields_values),
        "created_at": entity.created_at,
        "updated_at": entity.updated_at,
    }
    if isinstance(entity, Lead):
        snapshot: dict[str, Any] = {
            "id": entity.id,
            "name": entity.name,
            "status_id": entity.status_id,
            "price": entity.price,
            "responsible_user_id": entity.responsible_user_id,
            "last_modified": entity.updated_at,
            "modified_user_id": entity.updated_by,
            "created_user_id": entity.created_by,
            "date_create": entity.created_at,
            "pipeline_id": entity.pipeline_id,
            **common_tail,
        }
        if entity.closed_at is not None:
            snapshot["closed_at"] = entity.closed_at
        return snapshot
    snapshot = {"id": entity.id, "name": entity.name}
    if isinstance(entity, Contact):
        snapshot["first_name"] = entity.first_name
        snapshot["last_name"] = entity.last_name
    snapshot.update(
        {
            "responsible_user_id": entity.responsible_user_id,
            "date_create": entity.created_at,
            "last_modified": entity.updated_at,
            "created_user_id": entity.created_by,
            "modified_user_id": entity.updated_by,
        }
    )
    if isinstance(entity, Contact):
        company = account.companies.get(entity.company_id) if entity.company_id else None
        if company is not None and not company.is_deleted:
            snapshot["company_name"] = company.name
            snapshot["linked_company_id"] = company.id
    snapshot.update(common_tail)
    snapshot["type"] = "contact" if isinstance(entity, Contact) else "company"
    snapshot["linked_leads_id"] = {str(i): {"ID": i} for i in _live(entity.lead_ids, account.leads)}
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
