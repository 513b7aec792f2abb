"""Conformance: what the sandbox's webhooks look like on the wire
(https://www.amocrm.ru/developers/content/crm_platform/webhooks-format)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from amobridge.sandbox import Clock, Sandbox, SandboxConfig
from amobridge.sandbox.events import EntityChange
from amobridge.sandbox.state import Account
from amobridge.sandbox.webhooks import flatten, form_value, retry_delay

HOOK = "https://hooks.example/amo"


@dataclass
class Received:
    url: str
    headers: httpx.Headers
    raw: str

    @property
    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.raw, keep_blank_values=True))


@dataclass
class Receiver:
    """The webhook destinations: records every POST, answers ``status`` (per URL), or stalls."""

    received: list[Received] = field(default_factory=list)
    status: dict[str, int] = field(default_factory=dict)
    stall: set[str] = field(default_factory=set)
    refuse: set[str] = field(default_factory=set)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        if url in self.refuse:
            raise httpx.ConnectError("connection refused", request=request)
        self.received.append(Received(url, request.headers, (await request.aread()).decode()))
        if url in self.stall:
            await asyncio.Event().wait()  # never answers: the sandbox's deadline must cut it off
        return httpx.Response(self.status.get(url, 200), text="ok")

    def to(self, url: str) -> list[Received]:
        return [r for r in self.received if r.url == url]


@pytest.fixture
def receiver() -> Receiver:
    return Receiver()


@pytest.fixture
def sandbox_config() -> SandboxConfig:
    return SandboxConfig(rate_limit_enabled=False, webhook_timeout=0.2)


@pytest.fixture
async def sandbox(
    sandbox_config: SandboxConfig, signing_key: rsa.RSAPrivateKey, receiver: Receiver
) -> AsyncIterator[Sandbox]:
    box = Sandbox(
        sandbox_config,
        clock=Clock(frozen=True),
        signing_key=signing_key,
        outbound_transport=httpx.MockTransport(receiver),
    )
    yield box
    await box.aclose()


@dataclass
class Hooks:
    """One account with an admin API client, and shortcuts to subscribe and emit."""

    sandbox: Sandbox
    control: httpx.AsyncClient
    account: Account
    client: httpx.AsyncClient

    async def subscribe(self, destination: str, *settings: str) -> dict[str, Any]:
        reply = await self.client.post(
            "/api/v4/webhooks", json={"destination": destination, "settings": list(settings)}
        )
        assert reply.status_code == 201, reply.text
        return dict(reply.json())

    async def emit(self, *changes: EntityChange) -> None:
        self.sandbox.emit(self.account, list(changes))
        reply = await self.control.post("/_sandbox/webhooks/flush")
        assert reply.status_code == 200

    async def deliveries(self, **query: Any) -> list[dict[str, Any]]:
        reply = await self.control.get("/_sandbox/webhook-deliveries", params=query)
        assert reply.status_code == 200
        return list(reply.json())


async def open_hooks(
    sandbox: Sandbox, control: httpx.AsyncClient, app: Any, subdomain: str
) -> Hooks:
    account = (await control.post("/_sandbox/accounts", json={"subdomain": subdomain})).json()
    integration = (
        await control.post(
            "/_sandbox/integrations",
            json={"name": "hooks", "redirect_uri": "https://app.example/callback"},
        )
    ).json()
    token = (
        await control.post(
            "/_sandbox/long-lived-tokens",
            json={"client_id": integration["client_id"], "account_id": account["id"]},
        )
    ).json()["access_token"]
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url=f"https://{account['host']}",
        headers={"Authorization": f"Bearer {token}"},
    )
    return Hooks(sandbox, control, sandbox.state.accounts[account["id"]], client)


@pytest.fixture
async def hooks(
    sandbox: Sandbox, control: httpx.AsyncClient, sandbox_app: Any
) -> AsyncIterator[Hooks]:
    opened = await open_hooks(sandbox, control, sandbox_app, "acme")
    yield opened
    await opened.client.aclose()


def lead(**fields: Any) -> dict[str, Any]:
    snapshot: dict[str, Any] = {
        "id": 1190401,
        "name": "Сделка #1",
        "status_id": 53861254,
        "price": 1500,
        "responsible_user_id": 8000001,
        "pipeline_id": 6254262,
        "date_create": 1672189000,
        "last_modified": 1672189300,
        "created_at": 1672189000,
        "updated_at": 1672189300,
        "account_id": 30000001,
    }
    snapshot.update(fields)
    return snapshot


# --- the body ----------------------------------------------------------------------------------


async def test_status_change_body_is_the_documented_example(
    hooks: Hooks, receiver: Receiver
) -> None:
    """Form keys `leads[status][0][…]` with `old_status_id`, `pipeline_id`, custom fields
    flattened to `[custom_fields][0][values][0][value|enum]`, the `account[…]` block, every value a
    string, %-encoded brackets on the wire."""
    await hooks.subscribe(HOOK, "status_lead")
    snapshot = {
        "id": 1190401,
        "status_id": 142,
        "pipeline_id": 6254262,
        "updated_at": 1672189300,
        "custom_fields": [{"values": [{"value": "Сайт", "enum": 139517}]}],
    }
    await hooks.emit(
        EntityChange("leads", "update", 1190401, snapshot=snapshot, old_status_id=53861254)
    )
    [got] = receiver.to(HOOK)
    account = hooks.account
    assert got.form == {
        "account[subdomain]": "acme",
        "account[id]": str(account.id),
        "account[_links][self]": "https://acme.amocrm.ru",
        "leads[status][0][id]": "1190401",
        "leads[status][0][status_id]": "142",
        "leads[status][0][old_status_id]": "53861254",
        "leads[status][0][pipeline_id]": "6254262",
        "leads[status][0][updated_at]": "1672189300",
        "leads[status][0][custom_fields][0][values][0][value]": "Сайт",
        "leads[status][0][custom_fields][0][values][0][enum]": "139517",
    }
    assert "leads%5Bstatus%5D%5B0%5D%5Bid%5D=1190401" in got.raw
    assert "[" not in got.raw
    [record] = await hooks.deliveries()
    assert record["body"] == got.form
    assert record["raw"] == got.raw
    assert record["delivered"] is True
    assert record["status"] == 200
    assert record["attempt"] == 1
    assert record["events"] == ["leads[status][0]"]


async def test_headers(hooks: Hooks, receiver: Receiver) -> None:
    """POST, form-urlencoded, `User-Agent: amoCRM-Webhooks/3.0`, `X-Amocrm-Requestid: {uuid}`,
    `Accept-Encoding: gzip`; no signature."""
    await hooks.subscribe(HOOK, "add_lead")
    await hooks.emit(EntityChange("leads", "add", 1190401, snapshot=lead()))
    await hooks.emit(EntityChange("leads", "add", 1190402, snapshot=lead(id=1190402)))
    first, second = receiver.to(HOOK)
    headers = first.headers
    assert headers["content-type"] == "application/x-www-form-urlencoded"
    assert headers["user-agent"] == "amoCRM-Webhooks/3.0"
    assert headers["accept-encoding"] == "gzip"
    request_id = headers["x-amocrm-requestid"]
    assert len(request_id) == 36
    assert request_id.count("-") == 4
    assert second.headers["x-amocrm-requestid"] != request_id
    assert not any("signature" in name.lower() for name in headers)
    [record, _] = await hooks.deliveries()
    assert record["request_id"] == request_id
    assert record["headers"]["User-Agent"] == "amoCRM-Webhooks/3.0"


async def test_add_lead_carries_lead_fields_and_no_old_status(
    hooks: Hooks, receiver: Receiver
) -> None:
    """Leads carry name, price, responsible_user_id, date_create, last_modified, created_at,
    tags[i][id|name]; `add` lacks old_status_id."""
    await hooks.subscribe(HOOK, "add_lead")
    snapshot = lead(
        tags=[{"id": 5, "name": "сайт"}],
        custom_fields=[{"id": 77, "name": "Источник", "values": [{"value": "Сайт", "enum": 1}]}],
        old_status_id=1,
    )
    await hooks.emit(EntityChange("leads", "add", 1190401, snapshot=snapshot))
    [got] = receiver.to(HOOK)
    form = got.form
    assert form["leads[add][0][id]"] == "1190401"
    assert form["leads[add][0][name]"] == "Сделка #1"
    assert form["leads[add][0][price]"] == "1500"
    assert form["leads[add][0][responsible_user_id]"] == "8000001"
    assert form["leads[add][0][date_create]"] == "1672189000"
    assert form["leads[add][0][last_modified]"] == "1672189300"
    assert form["leads[add][0][tags][0][id]"] == "5"
    assert form["leads[add][0][tags][0][name]"] == "сайт"
    assert form["leads[add][0][custom_fields][0][id]"] == "77"
    assert form["leads[add][0][custom_fields][0][name]"] == "Источник"
    assert form["leads[add][0][custom_fields][0][values][0][value]"] == "Сайт"
    assert not any("old_status_id" in key for key in form)


async def test_status_change_goes_to_status_and_update_subscribers(
    hooks: Hooks, receiver: Receiver
) -> None:
    """A stage change is `status` (with old_status_id) for status_lead and `update` for
    update_lead; a subscriber to both gets both."""
    await hooks.subscribe("https://a.example/", "status_lead")
    await hooks.subscribe("https://b.example/", "update_lead")
    await hooks.subscribe("https://c.example/", "status_lead", "update_lead")
    await hooks.emit(
        EntityChange("leads", "update", 1190401, snapshot=lead(status_id=142), old_status_id=7)
    )
    [status] = receiver.to("https://a.example/")
    assert status.form["leads[status][0][old_status_id]"] == "7"
    assert status.form["leads[status][0][status_id]"] == "142"
    [update] = receiver.to("https://b.example/")
    assert update.form["leads[update][0][status_id]"] == "142"
    assert "leads[update][0][old_status_id]" not in update.form
    both = receiver.to("https://c.example/")
    assert len(both) == 2  # one POST per event (amoCRM documents no batching)
    kinds = [{k.split("[0]")[0] for k in r.form if not k.startswith("account")} for r in both]
    assert sorted(kind for item in kinds for kind in item) == ["leads[status]", "leads[update]"]


async def test_update_without_stage_change_is_no_status_hook(
    hooks: Hooks, receiver: Receiver
) -> None:
    """status_lead fires only when the stage changed."""
    await hooks.subscribe(HOOK, "status_lead")
    await hooks.emit(EntityChange("leads", "update", 1190401, snapshot=lead(), old_status_id=None))
    same = lead(status_id=53861254)
    await hooks.emit(
        EntityChange("leads", "update", 1190401, snapshot=same, old_status_id=53861254)
    )
    assert receiver.to(HOOK) == []


async def test_responsible_change(hooks: Hooks, receiver: Receiver) -> None:
    """responsible_lead fires when the responsible user changes (the old one is included)."""
    await hooks.subscribe(HOOK, "responsible_lead")
    await hooks.emit(
        EntityChange(
            "leads",
            "update",
            1190401,
            snapshot=lead(responsible_user_id=2),
            old_responsible_user_id=1,
        )
    )
    [got] = receiver.to(HOOK)
    assert got.form["leads[responsible][0][responsible_user_id]"] == "2"
    assert got.form["leads[responsible][0][old_responsible_user_id]"] == "1"


async def test_companies_come_as_contacts_with_type_company(
    hooks: Hooks, receiver: Receiver
) -> None:
    """Companies come as `contacts[…]` with `type=company`; contacts carry `type=contact`."""
    await hooks.subscribe(HOOK, "add_company", "add_contact")
    company = {"id": 3000001, "name": "ООО Ромашка", "responsible_user_id": 1}
    contact = {
        "id": 2000001,
        "name": "Иван",
        "company_name": "ООО Ромашка",
        "linked_company_id": 3000001,
    }
    await hooks.emit(EntityChange("companies", "add", 3000001, snapshot=company))
    await hooks.emit(EntityChange("contacts", "add", 2000001, snapshot=contact))
    first, second = receiver.to(HOOK)
    assert first.form["contacts[add][0][id]"] == "3000001"
    assert first.form["contacts[add][0][type]"] == "company"
    assert not any(key.startswith("companies") for key in first.form)
    assert second.form["contacts[add][0][type]"] == "contact"
    assert second.form["contacts[add][0][linked_company_id]"] == "3000001"


async def test_delete_sends_only_the_id(hooks: Hooks, receiver: Receiver) -> None:
    """Delete is `leads[delete][0][id]` only (the contacts key adds which kind it was)."""
    await hooks.subscribe(HOOK, "delete_lead", "delete_company")
    await hooks.emit(EntityChange("leads", "delete", 1190401, snapshot=lead()))
    await hooks.emit(EntityChange("companies", "delete", 3000001, snapshot={"id": 3000001}))
    first, second = receiver.to(HOOK)
    assert {k: v for k, v in first.form.items() if not k.startswith("account")} == {
        "leads[delete][0][id]": "1190401"
    }
    assert {k: v for k, v in second.form.items() if not k.startswith("account")} == {
        "contacts[delete][0][id]": "3000001",
        "contacts[delete][0][type]": "company",
    }


async def test_restore_and_note(hooks: Hooks, receiver: Receiver) -> None:
    """restore_lead and note_lead subscribers get `restore` and `note` items."""
    await hooks.subscribe(HOOK, "restore_lead", "note_contact")
    await hooks.emit(EntityChange("leads", "restore", 1190401, snapshot=lead()))
    await hooks.emit(
        EntityChange(
            "contacts",
            "note",
            2000001,
            snapshot={"id": 2000001, "account_id": 30000001},
            note={"id": 4000001, "note_type": 4, "text": "Позвонить"},
        )
    )
    restore, note = receiver.to(HOOK)
    assert restore.form["leads[restore][0][id]"] == "1190401"
    assert note.form["contacts[note][0][note][id]"] == "4000001"
    assert note.form["contacts[note][0][note][text]"] == "Позвонить"
    assert note.form["contacts[note][0][note][element_id]"] == "2000001"
    assert note.form["contacts[note][0][note][element_type]"] == "1"


async def test_settings_decide_what_is_sent(hooks: Hooks, receiver: Receiver) -> None:
    """A subscription receives only the events its `settings` name."""
    await hooks.subscribe(HOOK, "add_contact")
    await hooks.emit(
        EntityChange("leads", "add", 1190401, snapshot=lead()),
        EntityChange("leads", "update", 1190401, snapshot=lead(status_id=142), old_status_id=1),
        EntityChange("companies", "add", 3000001, snapshot={"id": 3000001}),
        EntityChange("contacts", "update", 2000001, snapshot={"id": 2000001}),
    )
    assert receiver.to(HOOK) == []
    await hooks.emit(EntityChange("contacts", "add", 2000001, snapshot={"id": 2000001}))
    assert len(receiver.to(HOOK)) == 1


async def test_one_post_per_change_unless_multi(
    hooks: Hooks, receiver: Receiver, control: httpx.AsyncClient
) -> None:
    """One POST per change by default (amoCRM documents no batching); `webhook_multi_per_post`
    puts one emit's changes in one POST with indexes 0, 1, …."""
    await hooks.subscribe(HOOK, "add_lead")
    changes = [EntityChange("leads", "add", i, snapshot=lead(id=i)) for i in (1, 2, 3)]
    await hooks.emit(*changes)
    assert len(receiver.to(HOOK)) == 3
    assert all("leads[add][0][id]" in r.form for r in receiver.to(HOOK))
    receiver.received.clear()
    await control.patch("/_sandbox/config", json={"webhook_multi_per_post": True})
    await hooks.emit(*changes)
    [combined] = receiver.to(HOOK)
    assert [combined.form[f"leads[add][{i}][id]"] for i in range(3)] == ["1", "2", "3"]


async def test_disabled_subscription_gets_nothing(hooks: Hooks, receiver: Receiver) -> None:
    """A disabled subscription receives no deliveries."""
    await hooks.subscribe(HOOK, "add_lead")
    hooks.account.webhooks[HOOK].disabled = True
    await hooks.emit(EntityChange("leads", "add", 1, snapshot=lead(id=1)))
    assert receiver.received == []


async def test_other_accounts_hooks_are_not_called(
    hooks: Hooks, receiver: Receiver, sandbox: Sandbox, control: httpx.AsyncClient, sandbox_app: Any
) -> None:
    """Webhooks are per account: a change in acme reaches only acme's subscriptions."""
    other = await open_hooks(sandbox, control, sandbox_app, "globex")
    try:
        await other.subscribe("https://globex.example/", "add_lead")
        await hooks.subscribe(HOOK, "add_lead")
        await hooks.emit(EntityChange("leads", "add", 1, snapshot=lead(id=1)))
        assert receiver.to("https://globex.example/") == []
        [got] = receiver.to(HOOK)
        assert got.form["account[subdomain]"] == "acme"
    finally:
        await other.client.aclose()


async def test_kommo_account_links_to_its_own_host(
    sandbox: Sandbox, control: httpx.AsyncClient, sandbox_app: Any, receiver: Receiver
) -> None:
    """`account[_links][self]` is the account's own https host (here a kommo.com one)."""
    account = (
        await control.post(
            "/_sandbox/accounts", json={"subdomain": "kommoacc", "base_domain": "kommo.com"}
        )
    ).json()
    box = sandbox.state.accounts[account["id"]]
    box.webhooks[HOOK] = _subscription(box, HOOK, ["add_lead"])
    sandbox.emit(box, [EntityChange("leads", "add", 1, snapshot=lead(id=1))])
    await control.post("/_sandbox/webhooks/flush")
    [got] = receiver.to(HOOK)
    assert got.form["account[_links][self]"] == "https://kommoacc.kommo.com"


def _subscription(account: Account, destination: str, settings: list[str]) -> Any:
    from amobridge.sandbox.state import WebhookSubscription

    return WebhookSubscription(
        id=1,
        account_id=account.id,
        destination=destination,
        settings=settings,
        sort=1,
        created_by=account.admin_user_id,
        created_at=0,
        updated_at=0,
    )


# --- delivered or not --------------------------------------------------------------------------


def test_default_deadline_is_two_seconds() -> None:
    """Delivered = a 100–299 reply within 2 s."""
    assert SandboxConfig().webhook_timeout == 2.0


async def test_a_late_reply_is_a_failure(hooks: Hooks, receiver: Receiver) -> None:
    """A reply after the deadline counts as failed (code 0), even if the destination got it."""
    await hooks.subscribe(HOOK, "add_lead")
    receiver.stall.add(HOOK)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await hooks.emit(EntityChange("leads", "add", 1, snapshot=lead(id=1)))
    elapsed = loop.time() - started
    assert len(receiver.to(HOOK)) == 1  # it arrived…
    [record] = await hooks.deliveries()
    assert record["delivered"] is False  # …but too late
    assert record["status"] is None
    assert record["code"] == 0
    assert "0.2" in record["error"]
    assert 0.2 <= record["duration"] < 1.5
    assert elapsed < 1.5
    assert record["next_retry_at"] is not None


@pytest.mark.parametrize(
    ("status", "delivered"),
    [(200, True), (204, True), (299, True), (301, False), (404, False), (500, False)],
)
async def test_only_2xx_is_delivered(
    hooks: Hooks, receiver: Receiver, status: int, delivered: bool
) -> None:
    """A 100–299 reply is delivered; redirects and errors are failures."""
    await hooks.subscribe(HOOK, "add_lead")
    receiver.status[HOOK] = status
    await hooks.emit(EntityChange("leads", "add", 1, snapshot=lead(id=1)))
    [record] = await hooks.deliveries()
    assert record["status"] == status
    assert record["delivered"] is delivered
    assert len(receiver.to(HOOK)) == 1  # a redirect is not followed


async def test_connection_error_is_code_zero(hooks: Hooks, receiver: Receiver) -> None:
    """No reply at all counts as code 0."""
    await hooks.subscribe(HOOK, "add_lead")
    receiver.refuse.add(HOOK)
    await hooks.emit(EntityChange("leads", "add", 1, snapshot=lead(id=1)))
    [record] = await hooks.deliveries()
    assert record["code"] == 0
    assert record["delivered"] is False
    assert "ConnectError" in record["error"]


async def test_delivery_log_filters(
    hooks: Hooks, receiver: Receiver, control: httpx.AsyncClient
) -> None:
    """The control API's delivery log filters by account, destination and outcome."""
    await hooks.subscribe(HOOK, "add_lead")
    await hooks.subscribe("https://down.example/", "add_lead")
    receiver.status["https://down.example/"] = 503
    await hooks.emit(EntityChange("leads", "add", 1, snapshot=lead(id=1)))
    assert len(await hooks.deliveries()) == 2
    assert len(await hooks.deliveries(account_id=hooks.account.id)) == 2
    assert await hooks.deliveries(account_id=1) == []
    [ok] = await hooks.deliveries(delivered="true")
    assert ok["destination"] == HOOK
    [bad] = await hooks.deliveries(delivered="false")
    assert bad["destination"] == "https://down.example/"
    assert [d["destination"] for d in await hooks.deliveries(destination=HOOK)] == [HOOK]
    assert (await control.get("/_sandbox/webhook-deliveries?delivered=maybe")).status_code == 400
    assert (await control.get("/_sandbox/webhook-deliveries?account_id=x")).status_code == 400
    assert (await control.delete("/_sandbox/webhook-deliveries")).status_code == 204
    assert await hooks.deliveries() == []


async def test_real_asgi_destination_parses_the_form(
    signing_key: rsa.RSAPrivateKey, sandbox_config: SandboxConfig
) -> None:
    """The body parses as an ordinary HTML form (python-multipart, as a Starlette/FastAPI
    receiver would) into the bracket keys."""
    seen: list[dict[str, str]] = []

    async def receive(request: Request) -> Response:
        form = await request.form()
        seen.append({k: str(v) for k, v in form.items()})
        return PlainTextResponse("ok")

    destination_app = Starlette(routes=[Route("/amo", receive, methods=["POST"])])
    box = Sandbox(
        sandbox_config,
        clock=Clock(frozen=True),
        signing_key=signing_key,
        outbound_transport=httpx.ASGITransport(app=destination_app),
    )
    try:
        account = box.state.create_account("acme")
        account.webhooks[HOOK] = _subscription(account, HOOK, ["add_lead"])
        box.emit(account, [EntityChange("leads", "add", 1, snapshot=lead(id=1, name="A & B = C"))])
        assert await box.hooks.flush() == 1
        assert seen[0]["leads[add][0][name]"] == "A & B = C"
        assert seen[0]["account[subdomain]"] == "acme"
        assert box.hooks.log[0].delivered is True
    finally:
        await box.aclose()


# --- units -----------------------------------------------------------------------------------


def test_values_are_written_as_php_does() -> None:
    """Every value is a string; booleans 1/0 and None left out, as http_build_query does."""
    assert form_value(True) == "1"
    assert form_value(False) == "0"
    assert form_value(None) is None
    assert form_value(5.0) == "5"
    assert form_value(2.5) == "2.5"
    assert form_value("x") == "x"
    out: list[tuple[str, str]] = []
    flatten("leads[add][0]", {"a": [], "b": None, "c": {"d": [1, {"e": True}]}}, out)
    assert out == [("leads[add][0][c][d][0]", "1"), ("leads[add][0][c][d][1][e]", "1")]


def test_retry_schedule_table() -> None:
    """Attempts 2, 3 (+5, +15 min) after any failure; 4, 5 (+15 min, +1 h) only after
    499 or 5xx; nothing after 5."""
    config = SandboxConfig()
    assert [retry_delay(config, n, 500) for n in (1, 2, 3, 4, 5)] == [300, 900, 900, 3600, None]
    assert [retry_delay(config, n, 499) for n in (1, 2, 3, 4)] == [300, 900, 900, 3600]
    for code in (0, 302, 404, 429, 498):
        assert [retry_delay(config, n, code) for n in (1, 2, 3)] == [300, 900, None]
