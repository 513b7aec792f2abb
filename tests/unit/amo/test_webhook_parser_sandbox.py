"""What the sandbox's webhook sender POSTs parses into the right events.

The sandbox builds its bodies without the SDK (it imports nothing from it), so a shape one of
them gets wrong shows up here. Changes are made through the sandbox's API and control API, as a
manager would; every body is parsed exactly as it arrived on the wire.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from amobridge.amo.webhooks import (
    CompanyEvent,
    ContactEvent,
    LeadEvent,
    NoteEvent,
    WebhookPayload,
    parse_webhook,
)
from amobridge.sandbox import Clock, Sandbox, SandboxConfig

HOOK = "https://hooks.example/amo"
EVERYTHING = [
    "add_lead", "update_lead", "status_lead", "responsible_lead", "delete_lead", "note_lead",
    "add_contact", "update_contact", "add_company", "update_company", "note_company",
]  # fmt: skip


@dataclass
class Inbox:
    """The webhook destination: keeps every body as received; fails the first ``fail`` POSTs."""

    bodies: list[bytes] = field(default_factory=list)
    headers: list[httpx.Headers] = field(default_factory=list)
    fail: int = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(await request.aread())
        self.headers.append(request.headers)
        if self.fail:
            self.fail -= 1
            return httpx.Response(500)
        return httpx.Response(200)

    def payloads(self) -> list[WebhookPayload]:
        return [parse_webhook(body) for body in self.bodies]


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
async def sandbox(
    sandbox_config: SandboxConfig, signing_key: rsa.RSAPrivateKey, inbox: Inbox
) -> AsyncIterator[Sandbox]:
    box = Sandbox(
        sandbox_config,
        clock=Clock(frozen=True),
        signing_key=signing_key,
        outbound_transport=httpx.MockTransport(inbox),
    )
    yield box
    await box.aclose()


@dataclass
class Crm:
    acme: Any  # conftest.Connected
    control: httpx.AsyncClient

    @property
    def api(self) -> httpx.AsyncClient:
        return self.acme.api  # type: ignore[no-any-return]

    async def post(self, path: str, body: Any) -> Any:
        reply = await self.api.post(path, json=body)
        assert reply.status_code in (200, 201), reply.text
        return reply.json()

    async def patch(self, path: str, body: Any) -> None:
        reply = await self.api.patch(path, json=body)
        assert reply.status_code == 200, reply.text

    async def flush(self) -> None:
        assert (await self.control.post("/_sandbox/webhooks/flush")).status_code == 200

    async def advance(self, seconds: int) -> None:
        reply = await self.control.post("/_sandbox/clock", json={"advance_seconds": seconds})
        assert reply.status_code == 200


@pytest.fixture
async def crm(acme: Any, control: httpx.AsyncClient) -> Crm:
    crm = Crm(acme, control)
    await crm.post("/api/v4/webhooks", {"destination": HOOK, "settings": EVERYTHING})
    return crm


def created_id(reply: Any, key: str) -> int:
    return int(reply["_embedded"][key][0]["id"])


async def test_every_kind_of_change_parses_into_its_event(crm: Crm, inbox: Inbox) -> None:
    """Leads add/status/responsible/update/delete/note, contacts and companies (as
    contacts[…] type=company), every value a string, one account block per body."""
    account = crm.acme.account
    pipeline = account["pipelines"][0]
    other_user = (
        await crm.control.post(f"/_sandbox/accounts/{account['id']}/users", json={"name": "Мария"})
    ).json()["id"]

    company = created_id(
        await crm.post("/api/v4/companies", [{"name": "ООО Ромашка"}]), "companies"
    )
    contact = created_id(
        await crm.post(
            "/api/v4/contacts",
            [
                {
                    "name": "Иван Петров",
                    "custom_fields_values": [
                        {"field_code": "PHONE", "values": [{"value": "8 (912) 345-67-89", "enum_code": "MOB"}]},
                        {"field_code": "EMAIL", "values": [{"value": "Ivan@Mail.RU", "enum_code": "WORK"}]},
                    ],
                    "_embedded": {"companies": [{"id": company}]},
                }
            ],
        ),
        "contacts",
    )  # fmt: skip
    lead = created_id(
        await crm.post(
            "/api/v4/leads",
            [{"name": "Заявка & co", "price": 15000, "_embedded": {
                "tags": [{"name": "сайт"}], "contacts": [{"id": contact}]}}],
        ),
        "leads",
    )  # fmt: skip
    await crm.flush()
    first_status = pipeline["statuses"][1]["id"]

    await crm.advance(60)
    await crm.patch(f"/api/v4/leads/{lead}", {"status_id": 142, "responsible_user_id": other_user})
    await crm.post(
        f"/api/v4/leads/{lead}/notes",
        [{"note_type": "common", "params": {"text": "Перезвонить завтра"}}],
    )
    await crm.post(f"/api/v4/companies/{company}/notes", [{"note_type": "common", "params": {"text": "Реквизиты"}}])  # fmt: skip
    reply = await crm.control.delete(f"/_sandbox/accounts/{account['id']}/leads/{lead}")
    assert reply.status_code in (200, 204), reply.text
    await crm.flush()

    payloads = inbox.payloads()
    assert payloads
    for payload, headers in zip(payloads, inbox.headers, strict=True):
        assert payload.ignored == []
        assert payload.account is not None
        assert (payload.account.id, payload.account.subdomain) == (account["id"], "acme")
        assert payload.account.self_url == f"https://{account['host']}"
        assert headers["user-agent"] == "amoCRM-Webhooks/3.0"
    events = [event for payload in payloads for event in payload.events]

    [company_add] = [e for e in events if isinstance(e, CompanyEvent) and e.action == "add"]
    assert (company_add.entity_key, company_add.id, company_add.name) == (
        "contacts",
        company,
        "ООО Ромашка",
    )

    [contact_add] = [e for e in events if isinstance(e, ContactEvent) and e.action == "add"]
    assert (contact_add.id, contact_add.name, contact_add.type) == (
        contact,
        "Иван Петров",
        "contact",
    )
    assert contact_add.phones == ["8 (912) 345-67-89"]
    assert contact_add.normalized_phones() == ["+79123456789"]
    assert contact_add.normalized_emails() == ["ivan@mail.ru"]
    assert (contact_add.linked_company_id, contact_add.company_name) == (company, "ООО Ромашка")
    phone = contact_add.custom_field("PHONE")
    assert phone is not None
    assert isinstance(phone.id, int)
    assert isinstance(phone.values[0].enum, int)  # the MOB option's enum id

    [lead_add] = [e for e in events if isinstance(e, LeadEvent) and e.action == "add"]
    assert (lead_add.id, lead_add.name, lead_add.price) == (lead, "Заявка & co", 15000)
    assert (lead_add.pipeline_id, lead_add.status_id) == (pipeline["id"], first_status)
    assert lead_add.old_status_id is None
    assert [tag.name for tag in lead_add.tags] == ["сайт"]
    assert isinstance(lead_add.created_at, int)
    assert lead_add.date_create == lead_add.created_at

    [status] = [e for e in events if isinstance(e, LeadEvent) and e.action == "status"]
    assert (status.id, status.status_id, status.old_status_id) == (lead, 142, first_status)
    assert status.pipeline_id == pipeline["id"]
    assert status.updated_at == lead_add.updated_at + 60  # type: ignore[operator]

    [responsible] = [e for e in events if isinstance(e, LeadEvent) and e.action == "responsible"]
    assert responsible.responsible_user_id == other_user
    assert responsible.old_responsible_user_id == account["admin_user_id"]

    [update] = [e for e in events if isinstance(e, LeadEvent) and e.action == "update"]
    assert (update.id, update.status_id) == (lead, 142)

    lead_note, company_note = (e for e in events if isinstance(e, NoteEvent))
    assert (lead_note.entity, lead_note.element_id, lead_note.element_type) == ("leads", lead, 2)
    assert lead_note.note_text == "Перезвонить завтра"
    assert (company_note.entity, company_note.element_id) == ("companies", company)
    assert company_note.note_text == "Реквизиты"

    [delete] = [e for e in events if isinstance(e, LeadEvent) and e.action == "delete"]
    assert delete.id == lead

    keys = [event.dedup_key for event in events]
    assert len(set(keys)) == len(keys)  # distinct changes never collide


async def test_a_redelivery_has_the_same_dedup_keys(crm: Crm, inbox: Inbox) -> None:
    """A failed delivery is sent again 5 minutes later; the receiver must see it as the same."""
    inbox.fail = 1
    await crm.post("/api/v4/leads", [{"name": "Повтор"}])
    await crm.flush()
    await crm.advance(300)
    first, again = inbox.payloads()
    assert inbox.bodies[0] == inbox.bodies[1]
    assert [e.dedup_key for e in first.events] == [e.dedup_key for e in again.events]
    assert first == again


@pytest.mark.parametrize(
    "sandbox_config",
    [SandboxConfig(rate_limit_enabled=False, webhook_multi_per_post=True)],
)
async def test_several_events_in_one_post(crm: Crm, inbox: Inbox) -> None:
    """Several entities or actions per POST (unverified on amoCRM; the sandbox does it by setting)."""
    pipeline = crm.acme.account["pipelines"][0]
    made = await crm.post("/api/v4/leads", [{"name": "a"}, {"name": "b"}, {"name": "c"}])
    ids = [item["id"] for item in made["_embedded"]["leads"]]
    await crm.flush()
    [payload] = inbox.payloads()
    assert [(e.action, e.id) for e in payload.events] == [("add", i) for i in ids]

    inbox.bodies.clear()
    await crm.api.patch(
        "/api/v4/leads",
        json=[{"id": ids[0], "status_id": 142, "pipeline_id": pipeline["id"]}, {"id": ids[1], "price": 5}],
    )  # fmt: skip
    await crm.flush()
    [payload] = inbox.payloads()
    assert sorted((e.action, e.id) for e in payload.events) == [
        ("status", ids[0]),
        ("update", ids[0]),
        ("update", ids[1]),
    ]
    assert payload.leads == payload.events
