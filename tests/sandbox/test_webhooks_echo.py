"""Conformance: changes made through the API (and the "UI") fire webhooks too — echo hooks
(in amoCRM, API-made changes fire webhooks too; the bodies are the usual ones)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from amobridge.sandbox import Clock, Sandbox, SandboxConfig

HOOK = "https://hooks.example/amo"


@dataclass
class Inbox:
    forms: list[dict[str, str]] = field(default_factory=list)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        body = (await request.aread()).decode()
        self.forms.append(dict(parse_qsl(body, keep_blank_values=True)))
        return httpx.Response(200)


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
    account: dict[str, Any]
    api: httpx.AsyncClient
    control: httpx.AsyncClient

    async def flush(self) -> None:
        assert (await self.control.post("/_sandbox/webhooks/flush")).status_code == 200


@pytest.fixture
async def crm(control: httpx.AsyncClient, sandbox_app: Any) -> AsyncIterator[Crm]:
    account = (await control.post("/_sandbox/accounts", json={"subdomain": "acme"})).json()
    integration = (
        await control.post(
            "/_sandbox/integrations",
            json={"name": "echo", "redirect_uri": "https://app.example/cb"},
        )
    ).json()
    token = (
        await control.post(
            "/_sandbox/long-lived-tokens",
            json={"client_id": integration["client_id"], "account_id": account["id"]},
        )
    ).json()["access_token"]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=sandbox_app),
        base_url=f"https://{account['host']}",
        headers={"Authorization": f"Bearer {token}"},
    ) as api:
        yield Crm(account, api, control)


async def subscribe(crm: Crm, *settings: str) -> None:
    reply = await crm.api.post(
        "/api/v4/webhooks", json={"destination": HOOK, "settings": list(settings)}
    )
    assert reply.status_code == 201, reply.text


def entries(form: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in form.items() if not k.startswith("account[")}


async def test_creating_a_lead_through_the_api_fires_add_lead(crm: Crm, inbox: Inbox) -> None:
    """Echo: POST /api/v4/leads fires add_lead with the new lead's fields as strings."""
    await subscribe(crm, "add_lead")
    reply = await crm.api.post("/api/v4/leads", json=[{"name": "Эхо", "price": 1500}])
    assert reply.status_code == 200, reply.text
    lead_id = reply.json()["_embedded"]["leads"][0]["id"]
    await crm.flush()
    [form] = inbox.forms
    pipeline = crm.account["pipelines"][0]
    assert form["account[id]"] == str(crm.account["id"])
    assert form["account[subdomain]"] == "acme"
    assert form["leads[add][0][id]"] == str(lead_id)
    assert form["leads[add][0][name]"] == "Эхо"
    assert form["leads[add][0][price]"] == "1500"
    assert form["leads[add][0][pipeline_id]"] == str(pipeline["id"])
    assert form["leads[add][0][status_id]"] == str(pipeline["statuses"][1]["id"])
    assert "leads[add][0][old_status_id]" not in form


async def test_moving_a_lead_fires_status_lead(crm: Crm, inbox: Inbox) -> None:
    """Echo: PATCH of the stage fires `status` with old_status_id and pipeline_id."""
    pipeline = crm.account["pipelines"][0]
    created = await crm.api.post("/api/v4/leads", json=[{"name": "Сделка"}])
    lead_id = created.json()["_embedded"]["leads"][0]["id"]
    await subscribe(crm, "status_lead", "update_lead")
    moved = await crm.api.patch(
        f"/api/v4/leads/{lead_id}", json={"status_id": 142, "pipeline_id": pipeline["id"]}
    )
    assert moved.status_code == 200, moved.text
    await crm.flush()
    status = next(f for f in inbox.forms if "leads[status][0][id]" in f)
    assert status["leads[status][0][id]"] == str(lead_id)
    assert status["leads[status][0][status_id]"] == "142"
    assert status["leads[status][0][old_status_id]"] == str(pipeline["statuses"][1]["id"])
    assert status["leads[status][0][pipeline_id]"] == str(pipeline["id"])
    assert any("leads[update][0][id]" in f for f in inbox.forms)


async def test_a_company_through_the_api_comes_as_contacts(crm: Crm, inbox: Inbox) -> None:
    """Echo: a company created by the API arrives as `contacts[add]` with type=company."""
    await subscribe(crm, "add_company")
    reply = await crm.api.post("/api/v4/companies", json=[{"name": "ООО Ромашка"}])
    assert reply.status_code == 200, reply.text
    await crm.flush()
    [form] = inbox.forms
    assert form["contacts[add][0][name]"] == "ООО Ромашка"
    assert form["contacts[add][0][type]"] == "company"


async def test_a_note_fires_note_lead(crm: Crm, inbox: Inbox) -> None:
    """Echo: a note added through the API fires note_lead."""
    created = await crm.api.post("/api/v4/leads", json=[{"name": "С заметкой"}])
    lead_id = created.json()["_embedded"]["leads"][0]["id"]
    await subscribe(crm, "note_lead")
    reply = await crm.api.post(
        f"/api/v4/leads/{lead_id}/notes",
        json=[{"note_type": "common", "params": {"text": "Перезвонить"}}],
    )
    assert reply.status_code == 200, reply.text
    await crm.flush()
    [form] = inbox.forms
    assert form["leads[note][0][note][element_id]"] == str(lead_id)
    assert form["leads[note][0][note][element_type]"] == "2"
    assert form["leads[note][0][note][params][text]"] == "Перезвонить"


async def test_deleting_in_the_ui_fires_delete_lead_with_only_the_id(
    crm: Crm, inbox: Inbox
) -> None:
    """A lead deleted (here by a manager in the UI) sends `leads[delete][0][id]` only."""
    created = await crm.api.post("/api/v4/leads", json=[{"name": "Удалить"}])
    lead_id = created.json()["_embedded"]["leads"][0]["id"]
    await subscribe(crm, "delete_lead")
    reply = await crm.control.delete(f"/_sandbox/accounts/{crm.account['id']}/leads/{lead_id}")
    assert reply.status_code in (200, 204), reply.text
    await crm.flush()
    [form] = inbox.forms
    assert entries(form) == {"leads[delete][0][id]": str(lead_id)}
