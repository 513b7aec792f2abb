"""Finding a customer's lead by e-mail or phone, through AmoClient, against the sandbox.

The sandbox's ``query`` is a case-insensitive substring search over names and custom field values
(amoCRM does not document how it matches phones), so these tests show the finders find
phones however they were typed, and drop contacts that only contain the digits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from amobridge.amo.auth import StaticTokenProvider
from amobridge.amo.client import AmoClient
from amobridge.amo.finders import (
    find_contacts_by_email,
    find_contacts_by_phone,
    find_lead_by_email,
    find_lead_by_phone,
    find_leads_by_email,
    find_leads_by_phone,
)
from amobridge.amo.models import ContactCreate, LeadCreate, LeadUpdate, email_field, phone_field
from amobridge.amo.models.pipelines import LOST_STATUS_ID, WON_STATUS_ID
from amobridge.amo.ratelimit import InMemoryRateLimiter
from amobridge.amo.resources import AmoLookupError
from amobridge.sandbox import Sandbox


class CountingTransport(httpx.ASGITransport):
    """The sandbox in-process, counting the API requests the finders make."""

    def __init__(self, app: Any) -> None:
        super().__init__(app=app)
        self.paths: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return await super().handle_async_request(request)


@pytest.fixture
def transport(sandbox_app: Any) -> CountingTransport:
    return CountingTransport(sandbox_app)


@pytest.fixture
async def amo(acme: Any, transport: CountingTransport) -> AsyncIterator[AmoClient]:
    client = AmoClient(
        acme.host,
        token_provider=StaticTokenProvider(acme.tokens["access_token"]),
        transport=transport,
        rate_limiter=InMemoryRateLimiter(rate=10_000),
    )
    async with client:
        yield client


async def contact(amo: AmoClient, name: str, *, phones: tuple[str, ...] = (), emails: tuple[str, ...] = ()) -> int:  # fmt: skip
    fields = []
    if phones:
        fields.append(phone_field(*phones))
    if emails:
        fields.append(email_field(*emails))
    made = await amo.contacts.create_one(
        ContactCreate(name=name, custom_fields_values=fields or None)
    )
    return made.id


async def lead(amo: AmoClient, sandbox: Sandbox, contact_id: int, **fields: Any) -> int:
    """A lead linked to ``contact_id``, created a minute after the previous one."""
    sandbox.clock.advance(60)
    made = await amo.leads.create_one(LeadCreate(contacts=[contact_id], **fields))
    return made.id


@pytest.fixture
async def wholesale(control: httpx.AsyncClient, acme: Any) -> dict[str, Any]:
    reply = await control.post(
        f"/_sandbox/accounts/{acme.account_id}/pipelines",
        json={"name": "Опт", "statuses": ["Новая заявка", "Счёт выставлен"]},
    )
    assert reply.status_code == 201, reply.text
    return dict(reply.json())


async def test_phone_found_however_it_was_typed(amo: AmoClient) -> None:
    """+7 / 8 / spaces / brackets are one phone (a Russian number as people type it)."""
    typed_ways = [
        "+7 (912) 345-67-89",
        "8 (912) 345-67-89",
        "89123456789",
        "+79123456789",
        "8 912 345 67 89",
        "+7 912 345-67-89",
    ]
    ids = [await contact(amo, f"Иван {i}", phones=(phone,)) for i, phone in enumerate(typed_ways)]
    # Contain the digits, or differ in one: never the same phone.
    await contact(amo, "Сосед", phones=("+7 (912) 345-67-80",))
    await contact(amo, "Длинный", phones=("8 912 345 67 891",))
    await contact(amo, "Без телефона", emails=("9123456789@example.com",))

    for typed in ("8 (912) 345-67-89", "+79123456789", "7 912 3456789", "9123456789"):
        found = await find_contacts_by_phone(amo, typed)
        assert sorted(c.id for c in found) == sorted(ids), typed


async def test_leads_by_phone_newest_first_and_by_pipeline(
    amo: AmoClient, sandbox: Sandbox, wholesale: dict[str, Any]
) -> None:
    ivan = await contact(amo, "Иван", phones=("+7 (912) 345-67-89", "+7 495 123-45-67"))
    also_ivan = await contact(amo, "Иван (дубль)", phones=("89123456789",))
    stranger = await contact(amo, "Пётр", phones=("+7 (912) 000-00-00",))
    old = await lead(amo, sandbox, ivan, name="старая")
    other = await lead(amo, sandbox, stranger, name="чужая")
    opt = await lead(amo, sandbox, also_ivan, name="опт", pipeline_id=wholesale["id"])
    new = await lead(amo, sandbox, ivan, name="новая")

    leads = await find_leads_by_phone(amo, "8 912 345 67 89")
    assert [lead.id for lead in leads] == [new, opt, old]
    assert other not in [lead.id for lead in leads]
    assert ivan in leads[0].contact_ids  # leads come with their contacts

    in_main = await find_leads_by_phone(amo, "8 912 345 67 89", pipeline="Воронка")
    assert [lead.id for lead in in_main] == [new, old]
    by_name = await find_leads_by_phone(amo, "+79123456789", pipeline="  опт ")
    assert [lead.id for lead in by_name] == [opt]
    by_id = await find_leads_by_phone(amo, "+79123456789", pipeline=wholesale["id"])
    assert [lead.id for lead in by_id] == [opt]
    # the second phone of the contact finds the same leads
    assert [lead.id for lead in await find_leads_by_phone(amo, "84951234567")] == [new, old]


async def test_best_lead_is_the_most_recently_updated_open_one(
    amo: AmoClient, sandbox: Sandbox, wholesale: dict[str, Any]
) -> None:
    ivan = await contact(amo, "Иван", phones=("+7 (912) 345-67-89",), emails=("Ivan@Mail.RU",))
    first = await lead(amo, sandbox, ivan, name="первая")
    second = await lead(amo, sandbox, ivan, name="вторая")
    won = await lead(amo, sandbox, ivan, name="выиграна", status_id=WON_STATUS_ID)
    await lead(amo, sandbox, ivan, name="в опте", pipeline_id=wholesale["id"])

    best = await find_lead_by_phone(amo, "89123456789", pipeline="Воронка")
    assert best is not None
    assert best.id == second  # the newest open one: "выиграна" is closed, "в опте" elsewhere
    newest = await find_lead_by_phone(amo, "89123456789", pipeline="Воронка", open_only=False)
    assert newest is not None
    assert newest.id == won
    sandbox.clock.advance(60)
    await amo.leads.update_one(first, LeadUpdate(price=100))  # touched last: now the newest

    best = await find_lead_by_email(amo, "ivan@mail.ru", pipeline="Воронка")
    assert best is not None
    assert best.id == first
    any_status = await find_lead_by_email(amo, "ivan@mail.ru", pipeline="Воронка", open_only=False)
    assert any_status is not None
    assert any_status.id == first
    sandbox.clock.advance(60)
    await amo.leads.update([
        LeadUpdate(id=first, status_id=LOST_STATUS_ID),
        LeadUpdate(id=second, status_id=LOST_STATUS_ID),
    ])  # fmt: skip
    assert await find_lead_by_phone(amo, "+79123456789", pipeline="Воронка") is None
    closed = await find_lead_by_phone(amo, "+79123456789", pipeline="Воронка", open_only=False)
    assert closed is not None
    assert closed.id in (first, second)


async def test_email_is_case_insensitive_and_exact(amo: AmoClient, sandbox: Sandbox) -> None:
    ivan = await contact(amo, "Иван", emails=("Ivan.Petrov@Mail.RU", "work@corp.example"))
    await contact(amo, "Тёзка", emails=("xivan.petrov@mail.ru",))  # contains it: not the same
    await contact(amo, "Опечатка", emails=("ivan.petrov@mail.ru.com",))
    ivan_lead = await lead(amo, sandbox, ivan)

    found = await find_contacts_by_email(amo, "  IVAN.petrov@mail.ru ")
    assert [c.id for c in found] == [ivan]
    assert [lead.id for lead in await find_leads_by_email(amo, "ivan.petrov@MAIL.ru")] == [
        ivan_lead
    ]
    assert await find_leads_by_email(amo, "nobody@mail.ru") == []
    assert await find_lead_by_email(amo, "nobody@mail.ru") is None


async def test_foreign_numbers(amo: AmoClient, sandbox: Sandbox) -> None:
    olena = await contact(amo, "Олена", phones=("+380 (44) 123-45-67",))
    olena_lead = await lead(amo, sandbox, olena)
    await contact(amo, "Москва", phones=("+7 441 234 567",))  # same digits, another country
    assert [lead.id for lead in await find_leads_by_phone(amo, "380441234567")] == [olena_lead]
    assert [
        lead.id for lead in await find_leads_by_phone(amo, "044 123 4567", default_region="UA")
    ] == [olena_lead]


async def test_not_a_phone_or_email_matches_nothing_without_a_request(
    amo: AmoClient, transport: CountingTransport
) -> None:
    await contact(amo, "abc", phones=("abc",), emails=("abc",))
    before = len(transport.paths)
    assert await find_leads_by_phone(amo, "abc") == []
    assert await find_lead_by_phone(amo, "") is None
    assert await find_leads_by_email(amo, "abc") == []
    assert await find_lead_by_email(amo, "  ") is None
    assert len(transport.paths) == before


async def test_unknown_pipeline_names_the_ones_that_exist(amo: AmoClient, sandbox: Sandbox) -> None:
    ivan = await contact(amo, "Иван", phones=("89123456789",))
    await lead(amo, sandbox, ivan)
    with pytest.raises(AmoLookupError, match="no pipeline 'Розница'") as caught:
        await find_leads_by_phone(amo, "89123456789", pipeline="Розница")
    assert "Воронка" in caught.value.available


async def test_a_contact_without_leads_gives_no_leads(amo: AmoClient) -> None:
    await contact(amo, "Иван", phones=("89123456789",))
    assert len(await find_contacts_by_phone(amo, "89123456789")) == 1
    assert await find_leads_by_phone(amo, "89123456789") == []
    assert await find_lead_by_phone(amo, "89123456789", open_only=False) is None


async def test_requests_per_lookup_are_bounded(
    amo: AmoClient, sandbox: Sandbox, transport: CountingTransport
) -> None:
    """Each query form is one page read, then one leads read (amoCRM bans heavy scanners)."""
    ivan = await contact(amo, "Иван", phones=("+7 (912) 345-67-89",))
    for _ in range(3):
        await lead(amo, sandbox, ivan)
    before = len(transport.paths)
    assert len(await find_leads_by_phone(amo, "89123456789")) == 3
    paths = transport.paths[before:]
    assert paths.count("/api/v4/contacts") == 6  # the six query forms of this phone
    assert paths.count("/api/v4/leads") == 1
    assert len(paths) == 7

    before = len(transport.paths)
    await find_leads_by_phone(amo, "89123456789", search_terms=["345-67-89"], pipeline="Воронка")
    assert transport.paths[before:] == [
        "/api/v4/contacts",
        "/api/v4/leads/pipelines",
        "/api/v4/leads",
    ]


async def test_max_contacts_caps_a_broad_search(amo: AmoClient, sandbox: Sandbox) -> None:
    ids = [await contact(amo, f"Клон {i}", phones=("89123456789",)) for i in range(5)]
    for contact_id in ids:
        await lead(amo, sandbox, contact_id)
    found = await find_contacts_by_phone(amo, "89123456789", max_contacts=2)
    assert 2 <= len(found) < 5  # at most two per query form, from the first forms that match
    assert len(await find_leads_by_phone(amo, "89123456789")) == 5
    with pytest.raises(ValueError, match="max_contacts"):
        await find_contacts_by_phone(amo, "89123456789", max_contacts=0)
