"""A storm of calls right after amoCRM stopped accepting the access token (our ``expires_at`` still
says it is valid): one refresh, and only the requests already on the wire draw a 401.

A scripted amoCRM behind ``httpx.MockTransport`` serves the API and the token endpoint; the
client's real :class:`OAuthTokenProvider` refreshes. No clock is involved: every wait is an event.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

from amobridge.amo.auth import InMemoryTokenStore, OAuthTokenProvider, TokenSet
from amobridge.amo.client import MAX_IN_FLIGHT, AmoClient
from amobridge.amo.ratelimit import InMemoryRateLimiter
from amobridge.amo.retry import RetryPolicy

KEY = "client-1@acme.amocrm.ru"


async def no_sleep(seconds: float) -> None:
    return None


class Amo:
    """One account: the API accepts only the current access token; refresh tokens are single-use.

    API replies wait for ``opened`` so a whole first wave is on the wire before any 401 returns.
    """

    def __init__(self, wave: int) -> None:
        self.generation = 0
        self.wave = wave
        self.wave_on_wire = asyncio.Event()
        self.opened = asyncio.Event()
        self.in_flight = 0
        self.most_in_flight = 0
        self.api: list[tuple[str, int]] = []  # (token sent, status)
        self.refreshes: list[str] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth2/access_token":
            body = json.loads(request.content)
            self.refreshes.append(body["refresh_token"])
            if body["refresh_token"] != f"refresh-{self.generation}":
                return httpx.Response(401, json={"hint": "Token has been revoked"})
            self.generation += 1
            n = self.generation
            return httpx.Response(
                200,
                json={
                    "token_type": "Bearer",
                    "expires_in": 86400,
                    "access_token": f"access-{n}",
                    "refresh_token": f"refresh-{n}",
                },
            )
        token = request.headers["authorization"].removeprefix("Bearer ")
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        if self.in_flight >= self.wave:
            self.wave_on_wire.set()
        try:
            await self.opened.wait()
        finally:
            self.in_flight -= 1
        if token != f"access-{self.generation}" or self.generation == 0:
            self.api.append((token, 401))
            return httpx.Response(401, json={"title": "Unauthorized", "status": 401})
        self.api.append((token, 200))
        return httpx.Response(200, json={"id": 1})


async def storm(calls: int) -> tuple[Amo, list[Any]]:
    amo_crm = Amo(wave=min(calls, MAX_IN_FLIGHT))
    transport = httpx.MockTransport(amo_crm)
    # A pair the SDK believes good for a day; amoCRM already refuses access-0 (generation 0).
    pair = TokenSet("access-0", "refresh-0", time.time() + 86400)
    tokens = OAuthTokenProvider(
        client_id="client-1",
        client_secret="client-secret-value-123456",
        redirect_uri="https://app.example/callback",
        store=InMemoryTokenStore({KEY: pair}),
        key=KEY,
        domain="acme.amocrm.ru",
        transport=transport,
        retry=RetryPolicy(sleep=no_sleep),
    )
    client = AmoClient(
        "acme",
        token_provider=tokens,
        transport=transport,
        rate_limiter=InMemoryRateLimiter(rate=1_000_000),
        retry=RetryPolicy(sleep=no_sleep),
        owns_token_provider=True,
    )
    async with client:
        calls_made = [
            asyncio.create_task(client.request_json("GET", "account")) for _ in range(calls)
        ]
        await amo_crm.wave_on_wire.wait()
        amo_crm.opened.set()
        results = await asyncio.gather(*calls_made, return_exceptions=True)
    return amo_crm, results


async def test_storm_refreshes_once_and_only_the_first_wave_draws_401s() -> None:
    calls = 3 * MAX_IN_FLIGHT
    amo_crm, results = await storm(calls)
    assert [r for r in results if isinstance(r, BaseException)] == []  # nobody saw two 401s
    assert amo_crm.refreshes == ["refresh-0"]
    refused = [token for token, status in amo_crm.api if status == 401]
    # Only requests already on the wire carried the stale token; the rest waited for the refresh.
    assert len(refused) == MAX_IN_FLIGHT
    assert set(refused) == {"access-0"}
    assert sum(1 for _, status in amo_crm.api if status == 200) == calls
    assert len(amo_crm.api) == calls + MAX_IN_FLIGHT


async def test_the_client_keeps_at_most_its_pool_size_on_the_wire() -> None:
    amo_crm, results = await storm(2 * MAX_IN_FLIGHT)
    assert amo_crm.most_in_flight == MAX_IN_FLIGHT
    assert len(results) == 2 * MAX_IN_FLIGHT
