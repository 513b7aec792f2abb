"""The SDK's account, user, contact, company, tag, note, custom-field and webhook-subscription
endpoints against the in-process sandbox, through AmoClient."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from amobridge.amo.auth import StaticTokenProvider
from amobridge.amo.client import AmoClient
from amobridge.amo.errors import AmoValidationError
from amobridge.amo.models import (
    CompanyCreate,
    CompanyUpdate,
    ContactCreate,
    ContactUpdate,
    CustomFieldType,
    LeadCreate,
    NoteCreate,
    NoteType,
    TagCreate,
    email_field,
    phone_field,
)
from amobridge.amo.ratelimit import InMemoryRateLimiter
from sandbox_support import Connected


@pytest.fixture
async def amo(acme: Connected, sandbox_app: Any) -> AsyncIterator[AmoClient]:
    client = AmoClient(
        acme.host,
        token_provider=StaticTokenProvider(acme.tokens["access_token"]),
        transport=httpx.ASGITransport(app=sandbox_app),
        rate_limiter=InMemoryRateLimiter(rate=10_000),
    )
    async with client:
        yield client


async def test_account_and_users(amo: AmoClient, acme: Connected) -> None:
    account = await amo.account.get()
    assert (account.id, account.subdomain) == (acme.account_id, "acme")
    assert account.current_user_id == acme.account["admin_user_id"]
    users = await amo.users.all()
    assert [u.id for u in users] == [acme.account["admin_user_id"]]
    assert users[0].is_admin is True
    one = await amo.users.get(users[0].id)
    assert one is not None
    assert one.email == users[0].email
    assert await amo.users.get(1) is None


async def test_contacts_create_find_iterate_update(amo: AmoClient) -> None:
    made = await amo.contacts.create(
        [
            ContactCreate(
                first_name="Анна",
                last_name=f"Смирнова{i}",
                custom_fields_values=[
                    phone_field(f"+7 (912) 555-00-0{i}"),
                    email_field(f"anna{i}@Example.com"),
                ],
                tags=["lead-form"],
            )
            for i in range(5)
        ],
        chunk_size=2,
    )
    assert len({c.id for c in made}) == 5

    found = await amo.contacts.find("anna3@example")
    assert [c.id for c in found] == [made[3].id]
    assert found[0].emails == ["anna3@Example.com"]
    assert found[0].phones == ["+7 (912) 555-00-03"]
    assert [t.name for t in found[0].tags] == ["lead-form"]
    assert await amo.contacts.find("nobody@nowhere") == []

    every = [c.id async for c in amo.contacts.iterate(limit=2, order=("id", "desc"))]
    assert every == [c.id for c in reversed(made)]

    await amo.contacts.update(
        [ContactUpdate(id=c.id, first_name=f"Анна-{i}") for i, c in enumerate(made)]
    )
    renamed = await amo.contacts.get(made[4].id)
    assert renamed is not None
    assert renamed.first_name == "Анна-4"
    assert renamed.phones == ["+7 (912) 555-00-04"]  # fields not sent keep their values


async def test_contact_leads_and_company_links(amo: AmoClient) -> None:
    (company,) = await amo.companies.create([CompanyCreate(name="ООО Ромашка")])
    (contact,) = await amo.contacts.create([ContactCreate(name="Ольга", companies=[company.id])])
    (lead,) = await amo.leads.create([LeadCreate(name="сделка", contacts=[contact.id])])
    seen = await amo.contacts.get(contact.id, with_=["leads"])
    assert seen is not None
    assert seen.company_id == company.id
    assert seen.lead_ids == [lead.id]
    linked = await amo.companies.get(company.id, with_=["contacts"])
    assert linked is not None
    assert linked.contact_ids == [contact.id]


async def test_companies_list_update(amo: AmoClient) -> None:
    made = await amo.companies.create(
        [CompanyCreate(name=f"Компания {i}", tags_to_add=["b2b"]) for i in range(3)]
    )
    await amo.companies.update_one(made[1].id, CompanyUpdate(name="Переименована"))
    page = await amo.companies.list(query="переименована")
    assert [c.id for c in page] == [made[1].id]
    every = [c.name async for c in amo.companies.iterate(ids=[made[0].id, made[2].id])]
    assert every == ["Компания 0", "Компания 2"]
    updated = await amo.companies.update([CompanyUpdate(id=made[0].id, tags=[])])
    assert updated[0].id == made[0].id
    company = await amo.companies.get(made[0].id)
    assert company is not None
    assert company.tags == []


async def test_tags_per_entity_type(amo: AmoClient) -> None:
    tags = await amo.tags.create("leads", ["горячий", TagCreate(name="холодный")])
    assert [t.name for t in tags] == ["горячий", "холодный"]
    listed = [t.name async for t in amo.tags.iterate("leads")]
    assert listed == ["горячий", "холодный"]
    assert (await amo.tags.list("contacts")).items == []  # tags are per entity type
    found = await amo.tags.list("leads", query="хол")
    assert [t.id for t in found] == [tags[1].id]


async def test_notes_per_entity(amo: AmoClient) -> None:
    leads = await amo.leads.create([LeadCreate(name="a"), LeadCreate(name="b")])
    created = await amo.notes.create(
        "leads",
        [
            NoteCreate.common(leads[0].id, "первый звонок"),
            NoteCreate.common(leads[1].id, "другая сделка"),
            NoteCreate.common(leads[0].id, "второй звонок"),
        ],
    )
    assert len({c.id for c in created}) == 3
    first = await amo.notes.list("leads", leads[0].id)
    assert [n.text for n in first] == ["первый звонок", "второй звонок"]
    assert all(n.note_type is NoteType.COMMON for n in first)
    every = [n.entity_id async for n in amo.notes.iterate("leads", limit=1)]
    assert sorted(every) == sorted([leads[0].id, leads[1].id, leads[0].id])
    note = await amo.notes.get("leads", created[1].id)
    assert note is not None
    assert note.text == "другая сделка"
    assert await amo.notes.get("leads", 1) is None


async def test_custom_fields(amo: AmoClient) -> None:
    fields = await amo.custom_fields.all("contacts")
    codes = {f.code: f for f in fields}
    assert {"PHONE", "EMAIL"} <= set(codes)
    phone = codes["PHONE"]
    assert phone.type is CustomFieldType.MULTITEXT
    work = phone.enum("WORK")
    assert work is not None
    fetched = await amo.custom_fields.get("contacts", phone.id)
    assert fetched is not None
    assert fetched.name == phone.name
    assert (await amo.custom_fields.find("contacts", phone.name or "")).id == phone.id
    assert await amo.custom_fields.get("contacts", 1) is None


async def test_webhook_subscriptions(amo: AmoClient) -> None:
    destination = "https://app.example/hooks/amocrm/abc"
    assert await amo.webhooks.list() == []
    made = await amo.webhooks.subscribe(destination, ["add_lead", "status_lead"], sort=5)
    assert made.destination == destination
    assert made.settings == ["add_lead", "status_lead"]
    again = await amo.webhooks.subscribe(destination, ["update_contact"])  # same destination
    assert again.id == made.id
    listed = await amo.webhooks.list(destination=destination)
    assert [(h.id, h.settings) for h in listed] == [(made.id, ["update_contact"])]
    assert await amo.webhooks.list(destination="https://other.example/") == []
    with pytest.raises(AmoValidationError):
        await amo.webhooks.subscribe(destination, ["not_an_event"])
    assert await amo.webhooks.unsubscribe(destination) is True
    assert await amo.webhooks.unsubscribe(destination) is False
    assert await amo.webhooks.list() == []
