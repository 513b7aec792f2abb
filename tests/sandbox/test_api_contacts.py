"""Conformance: the sandbox's contacts and companies API."""

from __future__ import annotations

from typing import Any

import httpx

from sandbox_support import Connected


async def add(api: httpx.AsyncClient, entity: str, items: list[dict[str, Any]]) -> list[int]:
    reply = await api.post(f"/api/v4/{entity}", json=items)
    assert reply.status_code == 200, reply.text
    return [item["id"] for item in reply.json()["_embedded"][entity]]


async def found(api: httpx.AsyncClient, entity: str, params: dict[str, Any]) -> list[int]:
    reply = await api.get(f"/api/v4/{entity}", params=params)
    if reply.status_code == 204:
        return []
    assert reply.status_code == 200, reply.text
    return [item["id"] for item in reply.json()["_embedded"][entity]]


def phone(value: str, enum_code: str = "WORK") -> dict[str, Any]:
    return {"field_code": "PHONE", "values": [{"value": value, "enum_code": enum_code}]}


def email(value: str) -> dict[str, Any]:
    return {"field_code": "EMAIL", "values": [{"value": value, "enum_code": "WORK"}]}


async def test_contact_shape_and_phone_email_fields(acme: Connected) -> None:
    """A contact's fields; PHONE/EMAIL written by ``field_code`` + ``enum_code`` come back
    with field id, name, code and the enum's id and code."""
    [contact_id] = await add(
        acme.api,
        "contacts",
        [
            {
                "first_name": "Иван",
                "last_name": "Петров",
                "custom_fields_values": [
                    phone("+7 900 111-22-33", "MOB"),
                    email("ivan@example.ru"),
                ],
            }
        ],
    )
    contact = (await acme.api.get(f"/api/v4/contacts/{contact_id}")).json()
    for key in (
        "id",
        "name",
        "first_name",
        "last_name",
        "responsible_user_id",
        "group_id",
        "created_by",
        "updated_by",
        "created_at",
        "updated_at",
        "is_deleted",
        "closest_task_at",
        "custom_fields_values",
        "account_id",
    ):
        assert key in contact, key
    assert contact["name"] == "Иван Петров"
    assert set(contact["_embedded"]) == {"tags", "companies"}
    phone_value = contact["custom_fields_values"][0]
    assert phone_value["field_code"] == "PHONE"
    assert phone_value["field_type"] == "multitext"
    assert isinstance(phone_value["field_id"], int)
    [value] = phone_value["values"]
    assert value["value"] == "+7 900 111-22-33"
    assert value["enum_code"] == "MOB"
    assert isinstance(value["enum_id"], int)


async def test_query_matches_phone_and_email_substrings(acme: Connected) -> None:
    """Contacts' ``query`` also hits phones and e-mails — plain substrings, e-mails
    case-insensitively (how amoCRM normalises phones is unverified; the sandbox does not)."""
    ivan, olga = await add(
        acme.api,
        "contacts",
        [
            {"name": "Иван", "custom_fields_values": [phone("+79001112233")]},
            {"name": "Ольга", "custom_fields_values": [email("Olga.K@Example.com")]},
        ],
    )
    assert await found(acme.api, "contacts", {"query": "9001112233"}) == [ivan]
    assert await found(acme.api, "contacts", {"query": "olga.k@example.com"}) == [olga]
    assert await found(acme.api, "contacts", {"query": "ольга"}) == [olga]
    # Plain substrings: a differently formatted phone does not match.
    assert await found(acme.api, "contacts", {"query": "8 (900) 111-22-33"}) == []


async def test_contacts_with_leads_and_missing(acme: Connected) -> None:
    """``with=leads`` lists the contact's leads; a missing contact is 204."""
    [contact_id] = await add(acme.api, "contacts", [{"name": "Анна"}])
    [lead_id] = await add(acme.api, "leads", [{"_embedded": {"contacts": [{"id": contact_id}]}}])
    plain = (await acme.api.get(f"/api/v4/contacts/{contact_id}")).json()
    assert "leads" not in plain["_embedded"]
    embedded = (await acme.api.get(f"/api/v4/contacts/{contact_id}?with=leads")).json()
    assert [lead["id"] for lead in embedded["_embedded"]["leads"]] == [lead_id]
    assert (await acme.api.get("/api/v4/contacts/1")).status_code == 204
    assert (
        await acme.api.get("/api/v4/contacts", params={"query": "нет такого"})
    ).status_code == 204


async def test_patch_contacts_array_and_one(acme: Connected) -> None:
    """PATCH array / PATCH one; fields not sent keep their values."""
    [contact_id] = await add(
        acme.api, "contacts", [{"name": "Old", "custom_fields_values": [phone("+100")]}]
    )
    reply = await acme.api.patch("/api/v4/contacts", json=[{"id": contact_id, "name": "New"}])
    assert reply.status_code == 200
    assert reply.json()["_embedded"]["contacts"][0]["id"] == contact_id
    one = await acme.api.patch(
        f"/api/v4/contacts/{contact_id}", json={"custom_fields_values": [email("a@b.c")]}
    )
    assert one.status_code == 200
    contact = (await acme.api.get(f"/api/v4/contacts/{contact_id}")).json()
    assert contact["name"] == "New"
    assert [v["field_code"] for v in contact["custom_fields_values"]] == ["PHONE", "EMAIL"]


async def test_companies_crud_and_links(acme: Connected) -> None:
    """Companies have the same shapes; ``_embedded.companies`` links a contact or lead,
    ``with=leads,contacts`` shows the company's links."""
    [company_id] = await add(acme.api, "companies", [{"name": "ООО Ромашка"}])
    [contact_id] = await add(
        acme.api,
        "contacts",
        [{"name": "Директор", "_embedded": {"companies": [{"id": company_id}]}}],
    )
    [lead_id] = await add(acme.api, "leads", [{"_embedded": {"companies": [{"id": company_id}]}}])
    company = (
        await acme.api.get(f"/api/v4/companies/{company_id}", params={"with": "leads,contacts"})
    ).json()
    assert company["name"] == "ООО Ромашка"
    assert [c["id"] for c in company["_embedded"]["contacts"]] == [contact_id]
    assert [lead["id"] for lead in company["_embedded"]["leads"]] == [lead_id]
    contact = (await acme.api.get(f"/api/v4/contacts/{contact_id}")).json()
    assert [c["id"] for c in contact["_embedded"]["companies"]] == [company_id]

    await acme.api.patch(f"/api/v4/companies/{company_id}", json={"name": "АО Ромашка"})
    assert await found(acme.api, "companies", {"query": "ао ром"}) == [company_id]
    assert (await acme.api.get("/api/v4/companies/5")).status_code == 204


async def test_unknown_linked_contact_is_a_validation_error(acme: Connected) -> None:
    """Linking a contact that does not exist → NotSupportedChoice at its path."""
    reply = await acme.api.post(
        "/api/v4/leads", json=[{"_embedded": {"contacts": [{"id": 424242}]}}]
    )
    assert reply.status_code == 400
    [error] = reply.json()["validation-errors"][0]["errors"]
    assert (error["code"], error["path"]) == ("NotSupportedChoice", "_embedded.contacts.0.id")
