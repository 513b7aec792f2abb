"""Conformance: subdomain discovery ``GET /oauth2/account/current/subdomain``."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from amobridge.sandbox.tokens import fingerprint
from sandbox_support import Connected, connect

PATH = "/oauth2/account/current/subdomain"


async def discover(sandbox_app: Any, host: str, refresh_token: str | None) -> httpx.Response:
    headers = {"X-Refresh-Token": refresh_token} if refresh_token is not None else {}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=sandbox_app), base_url=f"https://{host}"
    ) as client:
        return await client.get(PATH, headers=headers)


async def refresh(acme: Connected, refresh_token: str) -> httpx.Response:
    return await acme.api.post(
        "/oauth2/access_token",
        json={
            "client_id": acme.integration["client_id"],
            "client_secret": acme.integration["client_secret"],
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "redirect_uri": acme.integration["redirect_uri"],
        },
    )


@pytest.mark.parametrize("host", ["api-b.amocrm.ru", "api-a.amocrm.ru", "sandbox.test"])
async def test_live_refresh_token_names_its_account(
    acme: Connected, sandbox_app: Any, host: str
) -> None:
    """`GET https://{api_domain}/oauth2/account/current/subdomain` with X-Refresh-Token →
    {"id", "subdomain", "domain", "top_level_domain"} (domain is the account host, as the PHP SDK
    sets it as the account base domain)."""
    reply = await discover(sandbox_app, host, acme.tokens["refresh_token"])
    assert reply.status_code == 200, reply.text
    assert reply.json() == {
        "id": acme.account_id,
        "subdomain": "acme",
        "domain": "acme.amocrm.ru",
        "top_level_domain": "ru",
    }


async def test_kommo_account_is_found_on_its_api_domain(
    control: httpx.AsyncClient, sandbox_app: Any
) -> None:
    """Kommo accounts live on *.kommo.com; discovery reports that host."""
    globex = await connect(control, sandbox_app, "globex", base_domain="kommo.com")
    try:
        reply = await discover(sandbox_app, "api-c.kommo.com", globex.tokens["refresh_token"])
    finally:
        await globex.api.aclose()
    assert reply.json()["domain"] == "globex.kommo.com"
    assert reply.json()["top_level_domain"] == "com"


async def test_dead_refresh_tokens_are_401(acme: Connected, sandbox_app: Any) -> None:
    """Only a live refresh token is answered: a spent, unknown or missing one is 401."""
    old = acme.tokens["refresh_token"]
    assert (await refresh(acme, old)).status_code == 200
    for token in (old, "def50200nonsense", "", None):
        reply = await discover(sandbox_app, "api-b.amocrm.ru", token)
        assert reply.status_code == 401, token
        assert reply.headers["content-type"].startswith("application/problem+json")


async def test_expired_refresh_token_is_401(
    acme: Connected, sandbox_app: Any, control: httpx.AsyncClient
) -> None:
    """A refresh token dies after 3 months; discovery no longer knows it."""
    await control.post("/_sandbox/clock", json={"advance_seconds": 90 * 86400 + 1})
    reply = await discover(sandbox_app, "api-b.amocrm.ru", acme.tokens["refresh_token"])
    assert reply.status_code == 401


@pytest.mark.parametrize("host", ["acme.amocrm.ru", "www.amocrm.ru"])
async def test_not_served_on_account_or_www_hosts(
    acme: Connected, sandbox_app: Any, host: str
) -> None:
    """Discovery lives on the JWT's api_domain (api-b/api-c), not on account hosts or www."""
    reply = await discover(sandbox_app, host, acme.tokens["refresh_token"])
    assert reply.status_code == 404


async def test_discovery_is_logged_by_fingerprint(
    acme: Connected, sandbox_app: Any, control: httpx.AsyncClient
) -> None:
    """The request log records discovery calls with the token's fingerprint, never the token."""
    await control.delete("/_sandbox/requests")
    await discover(sandbox_app, "api-b.amocrm.ru", acme.tokens["refresh_token"])
    log = await control.get("/_sandbox/requests", params={"path_prefix": PATH})
    (record,) = log.json()
    assert record["status"] == 200
    assert record["account_id"] == acme.account_id
    assert record["refresh_token_fingerprint"] == fingerprint(acme.tokens["refresh_token"])
    assert acme.tokens["refresh_token"] not in log.text
