"""Token refresh against the sandbox: single flight under a storm, and a dead grant without one.

Refresh tokens are single-use (a second refresh with the same token answers 401 ``Token has been
revoked``) and the old access token stops working after a refresh; any 400/401 on refresh means the
grant is dead; two workers sharing a grant must not both spend its refresh token.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from amobridge.amo import (
    AmoClient,
    AmoReauthRequired,
    InMemoryRateLimiter,
    InMemoryTokenStore,
    JsonFileTokenStore,
    OAuthTokenProvider,
    RetryPolicy,
    SyncAmoClient,
    TokenSet,
    TokenStore,
)
from amobridge.amo.client import MAX_IN_FLIGHT
from sandbox_support import Connected


async def no_sleep(seconds: float) -> None:
    return None


def provider_for(acme: Connected, sandbox_app: Any, store: TokenStore) -> OAuthTokenProvider:
    return OAuthTokenProvider(
        client_id=acme.integration["client_id"],
        client_secret=acme.integration["client_secret"],
        redirect_uri=acme.integration["redirect_uri"],
        store=store,
        key="acme",
        domain=acme.host,
        transport=httpx.ASGITransport(app=sandbox_app),
        retry=RetryPolicy(sleep=no_sleep),
    )


def client_for(sandbox_app: Any, tokens: OAuthTokenProvider, host: str) -> AmoClient:
    # The sandbox's limiter is off in these tests; ours must not slow 1,000 requests to 7 rps.
    return AmoClient(
        host,
        token_provider=tokens,
        transport=httpx.ASGITransport(app=sandbox_app),
        rate_limiter=InMemoryRateLimiter(rate=100_000),
        retry=RetryPolicy(sleep=no_sleep),
    )


def seeded_store(acme: Connected) -> InMemoryTokenStore:
    pair = TokenSet.from_token_response(acme.tokens, now=time.time(), domain=acme.host)
    return InMemoryTokenStore({"acme": pair})


async def oauth_log(control: httpx.AsyncClient) -> list[dict[str, Any]]:
    reply = await control.get("/_sandbox/requests", params={"path_prefix": "/oauth2"})
    return list(reply.json())


async def refreshes(control: httpx.AsyncClient) -> list[dict[str, Any]]:
    return [r for r in await oauth_log(control) if r["grant_type"] == "refresh_token"]


async def test_500_concurrent_calls_with_an_expired_token_cause_exactly_one_refresh(
    acme: Connected, sandbox_app: Any, control: httpx.AsyncClient
) -> None:
    store = seeded_store(acme)
    async with (
        provider_for(acme, sandbox_app, store) as tokens,
        client_for(sandbox_app, tokens, acme.host) as amo,
    ):
        assert (await amo.account.get()).id == acme.account_id  # the pair works
        await control.delete("/_sandbox/requests")
        expired = await control.post(
            "/_sandbox/tokens/expire", json={"account_id": acme.account_id}
        )
        assert expired.json()["expired"] == 1  # the SDK still believes its token is valid

        results = await asyncio.gather(
            *(amo.request_json("GET", "account") for _ in range(500)), return_exceptions=True
        )

    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == []
    assert all(r["id"] == acme.account_id for r in results)  # type: ignore[index]
    done = await refreshes(control)
    assert len(done) == 1
    assert done[0]["status"] == 200
    api = (
        await control.get("/_sandbox/requests", params={"path_prefix": "/api/v4/account"})
    ).json()
    assert sum(1 for r in api if r["status"] == 200) == 500
    # Only the requests already on the wire carried the expired token; the others waited for the
    # refresh (a 401 per call at most: a second one would have failed that call).
    refused = sum(1 for r in api if r["status"] == 401)
    assert 1 <= refused <= MAX_IN_FLIGHT
    assert len(api) == 500 + refused
    stored = await store.load("acme")
    assert stored is not None
    assert stored.refresh_token != acme.tokens["refresh_token"]  # the rotated pair was saved


async def test_two_processes_sharing_a_json_store_refresh_once(
    acme: Connected, sandbox_app: Any, control: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Two providers on one token file stand for two worker processes."""
    path = tmp_path / "tokens.json"
    await JsonFileTokenStore(path).save(
        "acme", TokenSet.from_token_response(acme.tokens, now=time.time(), domain=acme.host)
    )
    async with (
        provider_for(acme, sandbox_app, JsonFileTokenStore(path)) as one,
        provider_for(acme, sandbox_app, JsonFileTokenStore(path)) as two,
        client_for(sandbox_app, one, acme.host) as amo_one,
        client_for(sandbox_app, two, acme.host) as amo_two,
    ):
        await asyncio.gather(amo_one.account.get(), amo_two.account.get())
        await control.post("/_sandbox/tokens/expire", json={"account_id": acme.account_id})
        await control.delete("/_sandbox/requests")
        calls = [
            amo.request_json("GET", "account") for amo in (amo_one, amo_two) for _ in range(50)
        ]
        results = await asyncio.gather(*calls)
    assert len(results) == 100
    assert len(await refreshes(control)) == 1


@pytest.mark.parametrize("how", ["uninstalled", "refresh token spent elsewhere"])
async def test_revoked_grant_raises_reauth_required_after_one_refresh_attempt(
    acme: Connected, sandbox_app: Any, control: httpx.AsyncClient, how: str
) -> None:
    store = seeded_store(acme)
    if how == "uninstalled":
        reply = await control.post(
            f"/_sandbox/integrations/{acme.integration['client_id']}/uninstall",
            json={"account_id": acme.account_id},
        )
        assert reply.status_code == 200, reply.text
    else:  # another worker used the refresh token and lost the pair
        spent = await acme.api.post(
            "/oauth2/access_token",
            json={
                "client_id": acme.integration["client_id"],
                "client_secret": acme.integration["client_secret"],
                "grant_type": "refresh_token",
                "refresh_token": acme.tokens["refresh_token"],
                "redirect_uri": acme.integration["redirect_uri"],
            },
        )
        assert spent.status_code == 200
    await control.delete("/_sandbox/requests")

    async with (
        provider_for(acme, sandbox_app, store) as tokens,
        client_for(sandbox_app, tokens, acme.host) as amo,
    ):
        with pytest.raises(AmoReauthRequired) as caught:
            await amo.request_json("GET", "leads")
        assert caught.value.hint == "Token has been revoked"
        assert "connect the integration again" in str(caught.value)
        # the whole fleet of callers now fails fast, without a storm on the token endpoint
        results = await asyncio.gather(
            *(amo.request_json("GET", "leads") for _ in range(50)), return_exceptions=True
        )
        assert all(isinstance(r, AmoReauthRequired) for r in results)

    attempts = await refreshes(control)
    assert len(attempts) == 1
    assert attempts[0]["status"] == 401
    api = (await control.get("/_sandbox/requests", params={"path_prefix": "/api/v4"})).json()
    assert len(api) == 1  # only the first call reached amoCRM


async def test_sync_client_refreshes_through_the_same_pipeline(
    acme: Connected, sandbox_app: Any, control: httpx.AsyncClient
) -> None:
    store = seeded_store(acme)
    await control.post("/_sandbox/tokens/expire", json={"account_id": acme.account_id})
    await control.delete("/_sandbox/requests")

    def blocking() -> int:
        with SyncAmoClient.oauth(
            acme.host,
            client_id=acme.integration["client_id"],
            client_secret=acme.integration["client_secret"],
            redirect_uri=acme.integration["redirect_uri"],
            store=store,
            key="acme",
            transport=httpx.ASGITransport(app=sandbox_app),
        ) as amo:
            return int(amo.account.get().id)

    assert await asyncio.to_thread(blocking) == acme.account_id
    assert len(await refreshes(control)) == 1
