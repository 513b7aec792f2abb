"""Conformance: amoCRM's request limits and bans, on a frozen sandbox clock
(https://www.amocrm.ru/developers/content/api/recommendations)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from amobridge.sandbox import Clock, Sandbox, SandboxConfig

PATH = "/api/v4/webhooks"  # any authenticated API route: each call counts the same
EVERY_RULE = pytest.mark.parametrize("rule", ["sliding", "fixed", "token_bucket"])
"""For the ban tests: the ban counts 429s, whichever rule drew them."""


@pytest.fixture
def sandbox_config() -> SandboxConfig:
    return SandboxConfig()  # rate limiting on, amoCRM's defaults


@pytest.fixture
async def sandbox(
    sandbox_config: SandboxConfig, signing_key: rsa.RSAPrivateKey
) -> AsyncIterator[Sandbox]:
    box = Sandbox(sandbox_config, clock=Clock(frozen=True), signing_key=signing_key)
    yield box
    await box.aclose()


class Clients:
    """API clients per (account, integration), closed together."""

    def __init__(self, control: httpx.AsyncClient, app: Any) -> None:
        self.control = control
        self.app = app
        self.opened: list[httpx.AsyncClient] = []

    async def account(self, subdomain: str) -> dict[str, Any]:
        reply = await self.control.post("/_sandbox/accounts", json={"subdomain": subdomain})
        return dict(reply.json())

    async def client(
        self, account: dict[str, Any], *, ip: str = "127.0.0.1", integration: str | None = None
    ) -> httpx.AsyncClient:
        """A client of a new integration (or ``integration``) installed in ``account``."""
        if integration is None:
            integration = (
                await self.control.post(
                    "/_sandbox/integrations",
                    json={"name": "limits", "redirect_uri": "https://app.example/cb"},
                )
            ).json()["client_id"]
        token = (
            await self.control.post(
                "/_sandbox/long-lived-tokens",
                json={"client_id": integration, "account_id": account["id"]},
            )
        ).json()["access_token"]
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app, client=(ip, 40000)),
            base_url=f"https://{account['host']}",
            headers={"Authorization": f"Bearer {token}"},
        )
        self.opened.append(client)
        return client

    async def advance(self, seconds: float) -> None:
        await self.control.post("/_sandbox/clock", json={"advance_seconds": seconds})

    async def config(self, **changes: Any) -> None:
        reply = await self.control.patch("/_sandbox/config", json=changes)
        assert reply.status_code == 200, reply.text


@pytest.fixture
async def clients(control: httpx.AsyncClient, sandbox_app: Any) -> AsyncIterator[Clients]:
    made = Clients(control, sandbox_app)
    yield made
    for client in made.opened:
        await client.aclose()


async def statuses(client: httpx.AsyncClient, count: int) -> list[int]:
    return [(await client.get(PATH)).status_code for _ in range(count)]


async def test_seven_per_second_then_429(clients: Clients) -> None:
    """At most 7 requests/second; the 8th in the same second gets 429 with amoCRM's JSON body
    and no Retry-After / X-RateLimit-* headers."""
    client = await clients.client(await clients.account("acme"))
    assert await statuses(client, 7) == [204] * 7
    reply = await client.get(PATH)
    assert reply.status_code == 429
    body = reply.json()
    assert body["title"] == "Too Many Requests"
    assert body["type"] == "https://httpstatus.es/429"
    assert body["status"] == 429
    assert "retry_after" not in body
    assert "retry-after" not in reply.headers
    assert not any(name.lower().startswith("x-ratelimit") for name in reply.headers)


async def test_next_second_lets_requests_through(clients: Clients) -> None:
    """The limit is per second: after waiting a second, requests pass again."""
    client = await clients.client(await clients.account("acme"))
    await statuses(client, 9)
    await clients.advance(0.5)
    assert (await client.get(PATH)).status_code == 429
    await clients.advance(0.5)
    assert await statuses(client, 7) == [204] * 7
    assert (await client.get(PATH)).status_code == 429


async def test_retry_after_field_by_setting(clients: Clients) -> None:
    """Kommo: a `retry_after` field in the 429 body, only when configured."""
    await clients.config(retry_after_in_429_body=300)
    client = await clients.client(await clients.account("acme"))
    await statuses(client, 7)
    reply = await client.get(PATH)
    assert reply.json()["retry_after"] == 300
    assert "retry-after" not in reply.headers


@EVERY_RULE
async def test_repeated_violations_ban_the_whole_account(clients: Clients, rule: str) -> None:
    """Repeated 429s turn into an account-wide 403 (an nginx HTML page) for every
    integration of that account; another account is unaffected; the ban lasts `ban_seconds`."""
    await clients.config(rate_rule=rule)
    acme = await clients.account("acme")
    first = await clients.client(acme)
    second = await clients.client(acme)
    other = await clients.client(await clients.account("globex"))
    limit = 20
    assert await statuses(first, 7) == [204] * 7
    assert await statuses(first, limit - 1) == [429] * (limit - 1)
    banned = await first.get(PATH)  # the 20th violation within the window
    assert banned.status_code == 403
    assert banned.headers["content-type"].startswith("text/html")
    assert "403 Forbidden" in banned.text
    assert (await second.get(PATH)).status_code == 403
    assert await statuses(other, 3) == [204] * 3
    await clients.advance(60)  # a new second and a new window: still banned
    assert (await first.get(PATH)).status_code == 403
    shown = (await clients.control.get(f"/_sandbox/accounts/{acme['id']}")).json()
    assert shown["banned_until"] is not None
    await clients.advance(3600)
    assert (await first.get(PATH)).status_code == 204
    assert (await second.get(PATH)).status_code == 204


@EVERY_RULE
async def test_violations_spread_out_do_not_ban(clients: Clients, rule: str) -> None:
    """The ban needs `ban_after_violations` 429s within `ban_window` seconds."""
    await clients.config(rate_rule=rule)
    client = await clients.client(await clients.account("acme"))
    for _ in range(3):
        await statuses(client, 7)
        assert await statuses(client, 10) == [429] * 10
        await clients.advance(61)
    assert (await client.get(PATH)).status_code == 204


async def test_ban_body_json_by_setting(clients: Clients) -> None:
    """The 403 may be HTML (default, as amoCRM's nginx) or a JSON problem by setting."""
    await clients.config(ban_body="json", ban_after_violations=1)
    client = await clients.client(await clients.account("acme"))
    await statuses(client, 7)
    reply = await client.get(PATH)
    assert reply.status_code == 403
    assert reply.json()["status"] == 403


@EVERY_RULE
async def test_unban_lifts_the_ban(clients: Clients, rule: str) -> None:
    """amoCRM support lifts a ban; the control API's POST /_sandbox/unban does it here."""
    acme = await clients.account("acme")
    client = await clients.client(acme)
    await clients.config(ban_after_violations=2, rate_rule=rule)
    await statuses(client, 9)
    assert (await client.get(PATH)).status_code == 403
    reply = await clients.control.post("/_sandbox/unban", json={"account_id": acme["id"]})
    assert reply.status_code == 204
    await clients.advance(1)
    assert (await client.get(PATH)).status_code == 204


async def test_control_ban(clients: Clients) -> None:
    """POST /_sandbox/ban bans an account at once (403 on every call) for `seconds`."""
    acme = await clients.account("acme")
    client = await clients.client(acme)
    reply = await clients.control.post(
        "/_sandbox/ban", json={"account_id": acme["id"], "seconds": 10}
    )
    assert reply.status_code == 200
    assert (await client.get(PATH)).status_code == 403
    await clients.advance(10)
    assert (await client.get(PATH)).status_code == 204


async def test_account_cap_across_integrations(clients: Clients) -> None:
    """An account-wide cap over all integrations, by setting (a community claim of 50 rps per
    account; amoCRM does not document one)."""
    await clients.config(account_rps_cap=10)
    acme = await clients.account("acme")
    first = await clients.client(acme)
    second = await clients.client(acme)
    assert await statuses(first, 5) == [204] * 5
    assert await statuses(second, 5) == [204] * 5
    assert (await first.get(PATH)).status_code == 429
    assert (await second.get(PATH)).status_code == 429
    other = await clients.client(await clients.account("globex"))
    assert (await other.get(PATH)).status_code == 204


async def test_each_integration_has_its_own_7_rps(clients: Clients) -> None:
    """The sandbox counts per integration and account: two integrations get 7 rps each."""
    acme = await clients.account("acme")
    first = await clients.client(acme)
    second = await clients.client(acme)
    assert await statuses(first, 7) == [204] * 7
    assert (await first.get(PATH)).status_code == 429
    assert await statuses(second, 7) == [204] * 7


async def test_rate_scope_ip(clients: Clients) -> None:
    """Kommo says per IP: with `rate_scope: "ip"` one address shares 7 rps over accounts."""
    await clients.config(rate_scope="ip", account_rps_cap=None)
    first = await clients.client(await clients.account("acme"), ip="10.0.0.1")
    second = await clients.client(await clients.account("globex"), ip="10.0.0.1")
    elsewhere = await clients.client(await clients.account("initech"), ip="10.0.0.2")
    assert await statuses(first, 4) == [204] * 4
    assert await statuses(second, 3) == [204] * 3
    assert (await second.get(PATH)).status_code == 429
    assert (await first.get(PATH)).status_code == 429
    assert await statuses(elsewhere, 7) == [204] * 7


async def test_rate_limit_off(clients: Clients) -> None:
    """`rate_limit_enabled: false` (what most tests use) never answers 429."""
    await clients.config(rate_limit_enabled=False)
    client = await clients.client(await clients.account("acme"))
    assert await statuses(client, 30) == [204] * 30


async def test_unauthenticated_calls_are_not_counted(clients: Clients, sandbox_app: Any) -> None:
    """A 401 is answered before the limiter: bad tokens do not use up the account's budget."""
    acme = await clients.account("acme")
    client = await clients.client(acme)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=sandbox_app), base_url=f"https://{acme['host']}"
    ) as anonymous:
        for _ in range(10):
            assert (await anonymous.get(PATH)).status_code == 401
    assert await statuses(client, 7) == [204] * 7


async def test_requests_log_shows_429(clients: Clients) -> None:
    """The request log records the 429s (tests of the SDK's limiter read it)."""
    acme = await clients.account("acme")
    client = await clients.client(acme)
    await statuses(client, 8)
    log = (
        await clients.control.get("/_sandbox/requests", params={"account_id": acme["id"]})
    ).json()
    assert [r["status"] for r in log] == [204] * 7 + [429]


async def test_rate_rule_is_a_runtime_setting(clients: Clients) -> None:
    """`GET /_sandbox/config` shows the rule (default `sliding`); PATCH switches it and refuses
    a rule (or any other choice setting) it does not know."""
    shown = (await clients.control.get("/_sandbox/config")).json()
    assert shown["rate_rule"] == "sliding"
    await clients.config(rate_rule="token_bucket")
    assert (await clients.control.get("/_sandbox/config")).json()["rate_rule"] == "token_bucket"
    for name, value in (("rate_rule", "leaky_bucket"), ("rate_scope", "planet"), ("ban_body", 1)):
        reply = await clients.control.patch("/_sandbox/config", json={name: value})
        assert reply.status_code == 422, name
        assert name in reply.json()["detail"]
    reply = await clients.control.patch("/_sandbox/config", json={"rate_rule": "leaky_bucket"})
    assert "sliding, fixed, token_bucket" in reply.json()["detail"]
