"""The client's limiter against the sandbox's own (rate limiting ON: its strict sliding window
over arrival times), measured where it counts: the arrivals the sandbox logs. amoCRM allows at most
7 requests per second; over it, 429; repeated 429s, an account-wide 403 ban.

The 1,000-call bound is proved on a virtual clock in tests/unit/amo/test_sdk_ratelimit.py; here
real requests with real latency show the pipeline never trips the real limiter.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import pytest

from amobridge.amo import (
    AmoBanned,
    AmoClient,
    BanBreaker,
    InMemoryRateLimiter,
    RetryPolicy,
    StaticTokenProvider,
)
from amobridge.sandbox import SandboxConfig
from sandbox_support import Connected


@pytest.fixture
def sandbox_config() -> SandboxConfig:
    return SandboxConfig(rate_limit_enabled=True, rate_limit_rps=7)


class JitterTransport(httpx.AsyncBaseTransport):
    """A network with latency: each request waits 0-``most`` s before it reaches the sandbox
    and its reply as long again before it reaches the client (a slow TCP connect, a queue at a
    proxy). A request granted later can so arrive before one granted earlier."""

    def __init__(self, inner: httpx.AsyncBaseTransport, *, most: float, seed: int) -> None:
        self._inner = inner
        self._most = most
        self._rng = random.Random(seed)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(self._rng.random() * self._most)
        response = await self._inner.handle_async_request(request)
        await response.aread()
        await asyncio.sleep(self._rng.random() * self._most)
        return response


@pytest.mark.slow
async def test_calls_with_random_latency_never_draw_a_429(
    acme: Connected, sandbox_app: Any, control: httpx.AsyncClient
) -> None:
    """30 sequential then 60 concurrent calls through a network that delays every request and
    reply by 0-80 ms: the sandbox answers every one 200 and never sees 8 arrivals in a second.
    (Counting a slot from acquire only, a request delayed on its way lands next to the seventh
    after it, and the sliding window answers 429.)"""
    await control.delete("/_sandbox/requests")
    amo = AmoClient(
        acme.host,
        token_provider=StaticTokenProvider(acme.tokens["access_token"]),
        transport=JitterTransport(httpx.ASGITransport(app=sandbox_app), most=0.08, seed=7),
        rate_limiter=InMemoryRateLimiter(7),
        retry=RetryPolicy(max_attempts=1),  # a 429 would surface instead of being retried away
    )
    async with amo:
        for _ in range(30):
            await amo.request_json("GET", "account")
        results = await asyncio.gather(*(amo.request_json("GET", "account") for _ in range(60)))
    assert len(results) == 60
    log = (await control.get("/_sandbox/requests", params={"path_prefix": "/api/v4"})).json()
    assert len(log) == 90
    assert [r["status"] for r in log].count(429) == 0
    assert most_in_one_second([r["time"] for r in log]) <= 7


def most_in_one_second(times: list[float]) -> int:
    """The most arrivals in any window ``(t - 1 s, t]`` (how the sandbox counts)."""
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


async def test_ban_stops_the_client_until_retry_at(
    acme: Connected, sandbox_app: Any, control: httpx.AsyncClient
) -> None:
    """A banned account answers 403 (an nginx HTML page) to everything."""
    await control.post("/_sandbox/ban", json={"account_id": acme.account_id, "seconds": 3600})
    await control.delete("/_sandbox/requests")
    breaker = BanBreaker(ban_seconds=1800)
    async with AmoClient(
        acme.host,
        token_provider=StaticTokenProvider(acme.tokens["access_token"]),
        transport=httpx.ASGITransport(app=sandbox_app),
        ban_breaker=breaker,
    ) as amo:
        with pytest.raises(AmoBanned) as caught:
            await amo.leads.list()
        assert caught.value.status == 403
        for _ in range(5):
            with pytest.raises(AmoBanned):
                await amo.request_json("GET", "account")
        log = (await control.get("/_sandbox/requests", params={"path_prefix": "/api/v4"})).json()
        assert len(log) == 1  # the breaker refused the rest without calling amoCRM

        await control.post("/_sandbox/unban", json={"account_id": acme.account_id})
        amo.reset_ban()
        assert (await amo.account.get()).id == acme.account_id
