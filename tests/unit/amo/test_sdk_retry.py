"""RetryPolicy arithmetic, the testing switch, send-state classification and the ban breaker."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from amobridge.amo.retry import BanBreaker, RetryPolicy, failure_was_sent, is_testing, set_testing


@pytest.fixture
def testing_off() -> Iterator[None]:
    yield
    set_testing(False)


def test_backoff_is_full_jitter_exponential_and_capped() -> None:
    policy = RetryPolicy(base=0.5, cap=4.0, rng=lambda: 1.0)
    assert [policy.backoff(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert RetryPolicy(base=0.5, rng=lambda: 0.25).backoff(3) == 0.5
    assert RetryPolicy(base=0.5, jitter=False, rng=lambda: 0.0).backoff(2) == 1.0


def test_next_wait_respects_attempts_total_time_and_hints() -> None:
    policy = RetryPolicy(max_attempts=3, max_total_seconds=10, base=1, jitter=False)
    assert policy.next_wait(attempts=1, spent=0) == 1.0
    assert policy.next_wait(attempts=3, spent=0) is None
    assert policy.next_wait(attempts=1, spent=0, hint=7) == 7
    assert policy.next_wait(attempts=1, spent=5, hint=7) is None


def test_policy_validates() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="negative"):
        RetryPolicy(base=-1)


async def test_injected_sleep_and_testing_switch(testing_off: None) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    policy = RetryPolicy(sleep=sleep)
    await policy.wait(2.5)
    assert waits == [2.5]
    set_testing(True)
    assert is_testing()
    await asyncio.wait_for(RetryPolicy().wait(3600), 1.0)  # no real wait under the switch
    await policy.wait(1.0)
    assert waits == [2.5]


@pytest.mark.parametrize(
    ("exc", "sent"),
    [
        (httpx.ConnectError("refused"), False),
        (httpx.ConnectTimeout("slow connect"), False),
        (httpx.PoolTimeout("pool"), False),
        (httpx.ReadTimeout("slow"), True),
        (httpx.WriteTimeout("slow"), True),
        (httpx.ReadError("reset"), True),
        (httpx.RemoteProtocolError("dropped"), True),
        (TimeoutError(), True),
    ],
)
def test_failure_was_sent(exc: BaseException, sent: bool) -> None:
    assert failure_was_sent(exc) is sent


def test_ban_breaker_trips_expires_and_resets() -> None:
    now = [100.0]
    breaker = BanBreaker(60, clock=lambda: now[0])
    assert breaker.retry_at_if_tripped() == 160.0
    breaker.trip("acme.amocrm.ru", 160.0)
    breaker.trip("acme.amocrm.ru", 120.0)  # an earlier guess never shortens a trip
    assert breaker.banned_until("acme.amocrm.ru") == 160.0
    assert breaker.banned_until("other.amocrm.ru") is None
    now[0] = 160.0
    assert breaker.banned_until("acme.amocrm.ru") is None
    breaker.trip("a", 500.0)
    breaker.trip("b", 500.0)
    breaker.reset("a")
    assert breaker.banned_until("a") is None
    assert breaker.banned_until("b") == 500.0
    breaker.reset()
    assert breaker.banned_until("b") is None
    with pytest.raises(ValueError, match="positive"):
        BanBreaker(0)
