"""Conformance: a manager's edits in amoCRM's UI (the control API) are what the API then returns,
and every change — API or UI — is reported to the webhook dispatcher (in amoCRM,
API-made changes fire webhooks too)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import parse_qsl

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from amobridge.sandbox import Clock, Sandbox, SandboxConfig, create_sandbox_app
from amobridge.sandbox.events import EntityChange
from amobridge.sandbox.state import Account
from sandbox_support import Connected


class Recorder:
    """Stands in for the webhook dispatcher: keeps every reported change."""

    def __init__(self) -> None:
        self.changes: list[EntityChange] = []

    def emit(self, account: Account, changes: list[EntityChange]) -> None:
        self.changes.extend(changes)

    def take(self) -> list[EntityChange]:
        taken, self.changes = self.changes, []
        return taken


@pytest.fixture
def recorder(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    monkeypatch.setattr(sandbox.hooks, "emit", recorder.emit)
    return recorder


def ui(acme: Connected, path: str = "") -> str:
    return f"/_sandbox/accounts/{acme.account_id}{path}"


# --- UI edits change what the API returns ------------------------------------------------------


async def test_ui_lead_with_contact_shorthand(acme: Connected, control: httpx.AsyncClient) -> None:
    """A lead a manager creates with a contact (name, e-mail, phone) is what the API lists; the
    contact is found by its e-mail (contacts' ``query``)."""
    reply = await control.post(
        ui(acme, "/leads"),
        json={
            "name": "Заявка по телефону",
            "price": 9900,
            "contact": {"name": "Ольга", "email": "olga@example.ru", "phone": "+79005554433"},
        },
    )
    assert reply.status_code == 201, reply.text
    created = reply.json()
    [link] = created["_embedded"]["contacts"]
    assert link["is_main"] is True

    lead = (await acme.api.get(f"/api/v4/leads/{created['id']}?with=contacts")).json()
    assert (lead["name"], lead["price"]) == ("Заявка по телефону", 9900)
    assert lead["_embedded"]["contacts"][0]["id"] == link["id"]
    found = (await acme.api.get("/api/v4/contacts", params={"query": "OLGA@example.ru"})).json()
    [contact] = found["_embedded"]["contacts"]
    assert contact["id"] == link["id"]
    assert {v["field_code"] for v in contact["custom_fields_values"]} == {"PHONE", "EMAIL"}


async def test_ui_status_change_shows_in_api(acme: Connected, control: httpx.AsyncClient) -> None:
    """A manager moving a lead to 142 is what the API then returns (status, ``closed_at``)."""
    lead_id = (await acme.api.post("/api/v4/leads", json=[{}])).json()["_embedded"]["leads"][0][
        "id"
    ]
    reply = await control.patch(ui(acme, f"/leads/{lead_id}"), json={"status_id": 142})
    assert reply.status_code == 200, reply.text
    lead = (await acme.api.get(f"/api/v4/leads/{lead_id}")).json()
    assert lead["status_id"] == 142
    assert lead["closed_at"] is not None
    filtered = await acme.api.get("/api/v4/leads", params={"filter[statuses][0][status_id]": 142})
    assert [x["id"] for x in filtered.json()["_embedded"]["leads"]] == [lead_id]


async def test_ui_delete_hides_from_api_but_not_from_control(
    acme: Connected, control: httpx.AsyncClient
) -> None:
    """A deleted lead answers 204 on the API; the control API still lists it (is_deleted)."""
    lead = (await control.post(ui(acme, "/leads"), json={"name": "Дубль"})).json()
    assert (await control.delete(ui(acme, f"/leads/{lead['id']}"))).status_code == 204
    assert (await acme.api.get(f"/api/v4/leads/{lead['id']}")).status_code == 204
    assert (await acme.api.get("/api/v4/leads")).status_code == 204
    everything = (await control.get(ui(acme, "/leads"))).json()
    assert [(x["id"], x["is_deleted"]) for x in everything] == [(lead["id"], True)]
    again = await control.delete(ui(acme, f"/leads/{lead['id']}"))
    assert again.status_code == 404
    patch = await control.patch(ui(acme, f"/leads/{lead['id']}"), json={"name": "x"})
    assert patch.status_code == 422


async def test_ui_contacts_and_companies(acme: Connected, control: httpx.AsyncClient) -> None:
    """Contacts (``phone``/``email`` shorthand) and companies edited in the UI, read by the API."""
    company = (await control.post(ui(acme, "/companies"), json={"name": "ИП Смирнов"})).json()
    contacts = (
        await control.post(
            ui(acme, "/contacts"),
            json=[
                {
                    "name": "Смирнов",
                    "phone": "+79990001122",
                    "_embedded": {"companies": [{"id": company["id"]}]},
                },
                {"first_name": "Анна", "last_name": "Смирнова"},
            ],
        )
    ).json()
    assert [c["name"] for c in contacts] == ["Смирнов", "Анна Смирнова"]
    api_company = (await acme.api.get(f"/api/v4/companies/{company['id']}?with=contacts")).json()
    assert [c["id"] for c in api_company["_embedded"]["contacts"]] == [contacts[0]["id"]]
    found = await acme.api.get("/api/v4/contacts", params={"query": "79990001122"})
    assert [c["id"] for c in found.json()["_embedded"]["contacts"]] == [contacts[0]["id"]]
    shown = (await control.get(ui(acme, f"/contacts/{contacts[1]['id']}"))).json()
    assert shown["last_name"] == "Смирнова"


async def test_ui_errors(acme: Connected, control: httpx.AsyncClient) -> None:
    """The control API answers ``{"detail"}`` 4xx, with the API's ``validation-errors`` on 422."""
    bad = await control.post(ui(acme, "/leads"), json={"status_id": 1, "colour": "red"})
    assert bad.status_code == 422
    body = bad.json()
    assert body["detail"] == "Request validation failed"
    assert {e["path"] for e in body["validation-errors"][0]["errors"]} == {"colour", "status_id"}
    assert (await control.post("/_sandbox/accounts/1/leads", json={})).status_code == 404
    assert (await control.get(ui(acme, "/leads/77"))).status_code == 404
    assert (await control.post(ui(acme, "/leads"), content=b"{oops")).status_code == 400
    assert (await acme.api.get("/api/v4/leads")).status_code == 204


# --- reported changes --------------------------------------------------------------------------


async def test_api_writes_report_changes_in_webhook_terms(
    acme: Connected, control: httpx.AsyncClient, recorder: Recorder
) -> None:
    """Every API create/update is reported with a snapshot in webhook terms; a status move
    carries ``old_status_id``, a new responsible ``old_responsible_user_id``."""
    contact_id = (
        await acme.api.post(
            "/api/v4/contacts",
            json=[
                {
                    "name": "Иван",
                    "custom_fields_values": [
                        {"field_code": "PHONE", "values": [{"value": "+7900"}]}
                    ],
                }
            ],
        )
    ).json()["_embedded"]["contacts"][0]["id"]
    [added_contact] = recorder.take()
    assert (added_contact.entity_type, added_contact.action) == ("contacts", "add")
    [phone] = added_contact.snapshot["custom_fields"]
    assert phone["code"] == "PHONE"
    assert phone["values"][0]["value"] == "+7900"
    assert isinstance(phone["values"][0]["enum"], int)

    lead_id = (
        await acme.api.post(
            "/api/v4/leads",
            json=[
                {
                    "name": "Курс",
                    "price": 100,
                    "tags_to_add": [{"name": "сайт"}],
                    "_embedded": {"contacts": [{"id": contact_id}]},
                }
            ],
        )
    ).json()["_embedded"]["leads"][0]["id"]
    [added] = recorder.take()
    assert (added.entity_type, added.action, added.entity_id) == ("leads", "add", lead_id)
    snapshot = added.snapshot
    assert list(snapshot)[:10] == [
        "id",
        "name",
        "status_id",
        "price",
        "responsible_user_id",
        "last_modified",
        "modified_user_id",
        "created_user_id",
        "date_create",
        "pipeline_id",
    ]
    assert snapshot["tags"] == [{"id": snapshot["tags"][0]["id"], "name": "сайт"}]
    assert snapshot["account_id"] == acme.account_id
    assert added.old_status_id is None

    user = (await control.post(ui(acme, "/users"), json={"name": "Пётр"})).json()
    old_status = snapshot["status_id"]
    await acme.api.patch(
        f"/api/v4/leads/{lead_id}", json={"status_id": 143, "responsible_user_id": user["id"]}
    )
    [updated] = recorder.take()
    assert updated.action == "update"
    assert updated.old_status_id == old_status
    assert updated.status_changed
    assert updated.old_pipeline_id is None  # same pipeline
    assert updated.old_responsible_user_id == acme.account["admin_user_id"]
    assert updated.snapshot["status_id"] == 143
    assert updated.snapshot["closed_at"] == updated.snapshot["updated_at"]

    await acme.api.patch(f"/api/v4/leads/{lead_id}", json={"name": "Курс 2"})
    [renamed] = recorder.take()
    assert renamed.old_status_id is None
    assert renamed.old_responsible_user_id is None

    contact = (await acme.api.get(f"/api/v4/contacts/{contact_id}")).json()
    assert contact["_embedded"]["companies"] == []
    await acme.api.patch(f"/api/v4/contacts/{contact_id}", json={"last_name": "Петров"})
    [contact_update] = recorder.take()
    assert contact_update.snapshot["type"] == "contact"
    assert contact_update.snapshot["linked_leads_id"] == {str(lead_id): {"ID": lead_id}}


async def test_complex_notes_and_ui_changes_are_reported(
    acme: Connected, control: httpx.AsyncClient, recorder: Recorder
) -> None:
    """Complex adds report the lead, its contact and its company; notes report ``note``;
    UI edits report like API writes, and a UI delete reports ``delete``."""
    [result] = (
        await acme.api.post(
            "/api/v4/leads/complex",
            json=[{"_embedded": {"contacts": [{"name": "A"}], "companies": [{"name": "B"}]}}],
        )
    ).json()
    assert [(c.entity_type, c.action) for c in recorder.take()] == [
        ("leads", "add"),
        ("contacts", "add"),
        ("companies", "add"),
    ]
    await acme.api.post(
        f"/api/v4/leads/{result['id']}/notes",
        json=[{"note_type": "common", "params": {"text": "Позвонить"}}],
    )
    [note] = recorder.take()
    assert (note.action, note.entity_id) == ("note", result["id"])
    assert note.note is not None
    assert note.note["params"] == {"text": "Позвонить"}

    await control.patch(ui(acme, f"/companies/{result['company_id']}"), json={"name": "C"})
    [company] = recorder.take()
    assert (company.entity_type, company.action) == ("companies", "update")
    assert company.snapshot["type"] == "company"
    assert company.snapshot["linked_leads_id"] == {str(result["id"]): {"ID": result["id"]}}

    await control.delete(ui(acme, f"/leads/{result['id']}"))
    [deleted] = recorder.take()
    assert (deleted.action, deleted.entity_id) == ("delete", result["id"])
    assert deleted.snapshot["id"] == result["id"]

    await control.post(
        ui(acme, f"/contacts/{result['contact_id']}/notes"),
        json={"note_type": "common", "params": {"text": "из интерфейса"}},
    )
    [ui_note] = recorder.take()
    assert (ui_note.entity_type, ui_note.action) == ("contacts", "note")


# --- end to end: the real dispatcher -----------------------------------------------------------


class Inbox:
    def __init__(self) -> None:
        self.bodies: list[dict[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(dict(parse_qsl(request.content.decode())))
        return httpx.Response(200)


@pytest.fixture
async def hooked(signing_key: rsa.RSAPrivateKey) -> AsyncIterator[tuple[Sandbox, Inbox]]:
    inbox = Inbox()
    box = Sandbox(
        SandboxConfig(rate_limit_enabled=False),
        clock=Clock(),
        signing_key=signing_key,
        outbound_transport=httpx.MockTransport(inbox),
    )
    yield box, inbox
    await box.aclose()


async def test_ui_and_api_changes_fire_webhooks(hooked: tuple[Sandbox, Inbox]) -> None:
    """API-made and UI-made changes both fire the subscribed webhooks, with amoCRM's form keys
    (``leads[status][0][old_status_id]``, ``contacts[add][0][linked_leads_id][ID][ID]``)."""
    sandbox, inbox = hooked
    app = create_sandbox_app(sandbox=sandbox)
    account = sandbox.state.create_account("acme")
    integration = sandbox.state.create_integration("hooks", "https://app.example/cb")
    token = sandbox.tokens.issue_long_lived(integration, account, 86400).token
    transport = httpx.ASGITransport(app=app)
    async with (
        httpx.AsyncClient(
            transport=transport,
            base_url="https://acme.amocrm.ru",
            headers={"Authorization": f"Bearer {token}"},
        ) as api,
        httpx.AsyncClient(transport=transport, base_url="http://sandbox.test") as control,
    ):
        subscribed = await api.post(
            "/api/v4/webhooks",
            json={
                "destination": "https://hooks.example/amo",
                "settings": ["add_lead", "status_lead", "add_contact"],
            },
        )
        assert subscribed.status_code == 201
        lead = (
            await control.post(
                f"/_sandbox/accounts/{account.id}/leads",
                json={"name": "UI", "contact": {"name": "Вера"}},
            )
        ).json()
        await sandbox.hooks.flush()
        keys = {k: v for body in inbox.bodies for k, v in body.items()}
        assert keys["leads[add][0][id]"] == str(lead["id"])
        contact_id = lead["_embedded"]["contacts"][0]["id"]
        assert keys["contacts[add][0][id]"] == str(contact_id)
        assert keys[f"contacts[add][0][linked_leads_id][{lead['id']}][ID]"] == str(lead["id"])
        assert keys["contacts[add][0][type]"] == "contact"

        inbox.bodies.clear()
        await api.patch(f"/api/v4/leads/{lead['id']}", json={"status_id": 142})
        await sandbox.hooks.flush()
        [body] = inbox.bodies
        assert body["leads[status][0][status_id]"] == "142"
        assert body["leads[status][0][old_status_id]"] == str(lead["status_id"])
        assert body["account[id]"] == str(account.id)
