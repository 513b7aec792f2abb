"""The client's limiter against the sandbox's own (rate limiting ON), measured where it counts: the
arrival times the sandbox logs. amoCRM allows at most 7 requests per second; over it, 429;
repeated 429s, an account-wide 403 ban.

The 1,000-task bound is proved on a fake clock in tests/unit/amo/test_sdk_ratelimit.py; here 50
concurrent calls (~7 s) show the real pipeline never trips the real limiter.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from amobridge.amo import AmoBanned, AmoClient, BanBreaker, RetryPolicy, StaticTokenProvider
from amobridge.sandbox import SandboxConfig
from sandbox_support import Connected


@pytest.fixture
def sandbox_config() -> SandboxConfig:
    return SandboxConfig(rate_limit_enabled=True, rate_limit_rps=7)


def most_in_one_second(times: list[float]) -> int:
    """The most arrivals in any window ``(t - 1 s, t]`` (how the sandbox counts)."""
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


@pytest.mark.slow
async def test_concurrent_calls_never_exceed_7_per_second_at_the_sandbox(
    acme: Connected, sandbox_app: Any, control: httpx.AsyncClient
) -> None:
    await control.delete("/_sandbox/requests")
    amo = AmoClient(
        acme.host,
        token_provider=StaticTokenProvider(acme.tokens["access_token"]),
        transport=httpx.ASGITransport(app=sandbox_app),
        retry=RetryPolicy(max_attempts=1),  # a 429 would surface instead of being retried away
    )
    async with amo:
        results = await asyncio.gather(*(amo.request_json("GET", "account") for _ in range(50)))
    assert len(results) == 50
    log = (await control.get("/_sandbox/requests", params={"path_prefix": "/api/v4"})).json()
    assert len(log) == 50
    assert [r["status"] for r in log].count(429) == 0
    assert most_in_one_second([r["time"] for r in log]) <= 7


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
