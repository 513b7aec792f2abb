"""The SDK's lead and pipeline endpoints against the in-process sandbox, through AmoClient."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from amobridge.amo.auth import StaticTokenProvider
from amobridge.amo.client import AmoClient
from amobridge.amo.errors import AmoValidationError
from amobridge.amo.models import (
    WON_STATUS_ID,
    CompanyCreate,
    ComplexLeadCreate,
    ContactCreate,
    ContactUpdate,
    CustomFieldClear,
    LeadCreate,
    LeadUpdate,
    email_field,
    field_value,
    phone_field,
)
from amobridge.amo.ratelimit import InMemoryRateLimiter
from amobridge.amo.resources import AmoLookupError
from sandbox_support import Connected


@pytest.fixture
async def amo(acme: Connected, sandbox_app: Any) -> AsyncIterator[AmoClient]:
    """An SDK client for ``acme``; its limiter is generous (the sandbox's is off in these tests)."""
    client = AmoClient(
        acme.host,
        token_provider=StaticTokenProvider(acme.tokens["access_token"]),
        transport=httpx.ASGITransport(app=sandbox_app),
        rate_limiter=InMemoryRateLimiter(rate=10_000),
    )
    async with client:
        yield client


async def api_requests(control: httpx.AsyncClient, acme: Connected, prefix: str) -> list[Any]:
    reply = await control.get(
        "/_sandbox/requests", params={"account_id": acme.account_id, "path_prefix": prefix}
    )
    return list(reply.json())


async def test_create_101_leads_in_three_requests_and_read_them_back(
    amo: AmoClient, control: httpx.AsyncClient, acme: Connected
) -> None:
    created = await amo.leads.create([LeadCreate(name=f"lead {i}", price=i) for i in range(101)])

    posts = [r for r in await api_requests(control, acme, "/api/v4/leads") if r["method"] == "POST"]
    assert len(posts) == 3
    assert len({c.id for c in created}) == 101
    # Each result is the lead made from the input at the same position.
    for index in (0, 50, 100):
        lead = await amo.leads.get(created[index].id)
        assert lead is not None
        assert (lead.name, lead.price) == (f"lead {index}", index)
    ids = [lead.id async for lead in amo.leads.iterate(limit=40)]
    assert ids == sorted(c.id for c in created)
    pages = [r for r in await api_requests(control, acme, "/api/v4/leads") if r["method"] == "GET"]
    assert sum("limit=40" in r["query"] for r in pages) == 3  # 40 + 40 + 21, no extra request


async def test_list_page_and_last_page(amo: AmoClient) -> None:
    await amo.leads.create([LeadCreate(name=str(i)) for i in range(5)])
    first = await amo.leads.list(limit=3, order=("id", "desc"))
    assert (first.page, first.has_next, len(first)) == (1, True, 3)
    last = await amo.leads.list(page=2, limit=3, order=("id", "desc"))
    assert (last.page, last.has_next, len(last)) == (2, False, 2)
    assert [lead.name for lead in [*first, *last]] == ["4", "3", "2", "1", "0"]
    empty = await amo.leads.list(query="no such lead anywhere")
    assert (empty.items, empty.has_next) == ([], False)


async def test_missing_lead_is_none(amo: AmoClient) -> None:
    assert await amo.leads.get(999_999_999) is None


async def test_filters_by_status_pipeline_and_updated_at(
    amo: AmoClient, control: httpx.AsyncClient, acme: Connected
) -> None:
    wholesale = (
        await control.post(
            f"/_sandbox/accounts/{acme.account_id}/pipelines",
            json={"name": "Опт", "statuses": ["Новая заявка", "Счёт выставлен"]},
        )
    ).json()
    invoiced = await amo.pipelines.find_status("опт", "счёт выставлен")
    main_first = await amo.pipelines.find_status(None, "Первичный контакт")
    made = await amo.leads.create(
        [
            LeadCreate(name="retail"),
            LeadCreate(name="wholesale", pipeline_id=invoiced.pipeline_id, status_id=invoiced.id),
            LeadCreate(name="won", pipeline_id=invoiced.pipeline_id, status_id=WON_STATUS_ID),
        ]
    )
    retail, opt, won = (c.id for c in made)

    in_status = await amo.leads.list(statuses=[(invoiced.pipeline_id, invoiced.id)])
    assert [lead.id for lead in in_status] == [opt]
    in_pipeline = await amo.leads.list(pipeline_id=wholesale["id"])
    assert {lead.id for lead in in_pipeline} == {opt, won}
    retail_lead = await amo.leads.get(retail)
    assert retail_lead is not None
    assert (retail_lead.pipeline_id, retail_lead.status_id) == (
        main_first.pipeline_id,
        main_first.id,
    )

    before = retail_lead.updated_at
    assert before is not None
    await control.post("/_sandbox/clock", json={"advance_seconds": 3600})
    await amo.leads.update_one(retail, LeadUpdate(price=100))
    changed = await amo.leads.list(updated_from=before + 1800)
    assert [lead.id for lead in changed] == [retail]
    unchanged = await amo.leads.list(updated_to=before + 1800, order=("id", "asc"))
    assert [lead.id for lead in unchanged] == [opt, won]


async def test_update_batch_and_one(amo: AmoClient) -> None:
    made = await amo.leads.create([LeadCreate(name=f"u{i}") for i in range(7)])
    updated = await amo.leads.update(
        [LeadUpdate(id=c.id, price=(i + 1) * 100) for i, c in enumerate(made)], chunk_size=3
    )
    assert [u.id for u in updated] == [c.id for c in made]
    leads = {lead.id: lead async for lead in amo.leads.iterate()}
    assert [leads[c.id].price for c in made] == [100, 200, 300, 400, 500, 600, 700]

    won = await amo.leads.update_one(made[0].id, LeadUpdate(status_id=WON_STATUS_ID))
    lead = await amo.leads.get(won.id)
    assert lead is not None
    assert lead.is_won
    assert lead.closed_at is not None


async def test_tags_contacts_and_custom_fields_on_leads(amo: AmoClient) -> None:
    (contact,) = await amo.contacts.create([ContactCreate(name="Иван")])
    (company,) = await amo.companies.create([CompanyCreate(name="ООО Ромашка")])
    (made,) = await amo.leads.create(
        [
            LeadCreate(
                name="с контактом",
                contacts=[contact.id],
                companies=[company.id],
                tags_to_add=["vip", "web"],
            )
        ]
    )
    lead = await amo.leads.get(made.id, with_contacts=True)
    assert lead is not None
    assert lead.main_contact_id == contact.id
    assert lead.company_id == company.id
    assert sorted(t.name or "" for t in lead.tags) == ["vip", "web"]

    await amo.leads.update_one(made.id, LeadUpdate(tags_to_delete=["web"]))
    lead = await amo.leads.get(made.id)
    assert lead is not None
    assert [t.name for t in lead.tags] == ["vip"]
    without = await amo.leads.get(made.id)
    assert without is not None
    assert without.contact_ids == []  # contacts are embedded only with=contacts


async def test_complex_create_with_contact_and_company(amo: AmoClient) -> None:
    results = await amo.leads.create_complex(
        [
            ComplexLeadCreate(
                name=f"complex {i}",
                price=10 * i,
                contact=ContactCreate(
                    first_name="Пётр",
                    last_name=f"Номер{i}",
                    custom_fields_values=[
                        phone_field(f"+7912000000{i}"),
                        email_field(f"petr{i}@example.com"),
                    ],
                ),
                company=CompanyCreate(name=f"Компания {i}") if i % 2 else None,
            )
            for i in range(3)
        ]
    )
    assert [r.merged for r in results] == [False, False, False]
    for i, result in enumerate(results):
        lead = await amo.leads.get(result.id, with_contacts=True)
        assert lead is not None
        assert lead.name == f"complex {i}"
        assert lead.main_contact_id == result.contact_id
        assert (result.company_id is not None) == bool(i % 2)
        contact = await amo.contacts.get(result.contact_id)  # type: ignore[arg-type]
        assert contact is not None
        assert contact.phones == [f"+7912000000{i}"]
        assert contact.emails == [f"petr{i}@example.com"]


async def test_validation_errors_name_the_generated_request_id(amo: AmoClient) -> None:
    with pytest.raises(AmoValidationError) as caught:
        await amo.leads.create([LeadCreate(name="ok"), LeadCreate(status_id=1)])
    assert caught.value.errors
    assert all(e.request_id and e.request_id.endswith("-1") for e in caught.value.errors)
    assert (await amo.leads.list()).items == []  # nothing was written


async def test_custom_field_values_set_and_cleared(amo: AmoClient) -> None:
    source = await amo.custom_fields.find("contacts", "PHONE")  # every account has it
    (made,) = await amo.contacts.create(
        [ContactCreate(name="x", custom_fields_values=[field_value(source.id, "+79990001122")])]
    )
    contact = await amo.contacts.get(made.id)
    assert contact is not None
    assert contact.phones == ["+79990001122"]
    await amo.contacts.update_one(
        made.id, ContactUpdate(custom_fields_values=[CustomFieldClear(field_code="PHONE")])
    )
    contact = await amo.contacts.get(made.id)
    assert contact is not None
    assert contact.phones == []


async def test_pipelines_and_find_status_errors(amo: AmoClient) -> None:
    pipelines = await amo.pipelines.list()
    (main,) = pipelines
    assert main.is_main
    statuses = await amo.pipelines.statuses(main.id)
    assert [s.id for s in statuses] == [s.id for s in main.statuses]
    assert {WON_STATUS_ID, 143} <= {s.id for s in statuses}
    fetched = await amo.pipelines.get(main.id)
    assert fetched is not None
    assert fetched.name == main.name
    with pytest.raises(AmoLookupError) as caught:
        await amo.pipelines.find_status(main.id, "Оплачено")
    assert "Переговоры" in caught.value.available
    assert "'Переговоры' (id" in str(caught.value)
    with pytest.raises(AmoLookupError, match="no pipeline 'Розница'"):
        await amo.pipelines.find_status("Розница", "Переговоры")
