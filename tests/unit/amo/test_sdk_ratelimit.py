"""The in-memory limiter on a fake clock: the bound, FIFO order, pauses (amocrm-api.md §7: at
most 7 requests per second)."""

from __future__ import annotations

import asyncio
import random

import pytest

from amobridge.amo.ratelimit import InMemoryRateLimiter, RateLimitBackend


class FakeTime:
    """A clock that moves only when someone sleeps, and a sleep that moves it."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


def max_in_window(times: list[float], window: float) -> int:
    """The most grants in any half-open window ``[t, t + window)``."""
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


async def test_1000_concurrent_acquires_never_exceed_7_per_second() -> None:
    fake = FakeTime()
    limiter = InMemoryRateLimiter(7, clock=fake.clock, sleep=fake.sleep)
    grants: list[float] = []

    async def call() -> None:
        await asyncio.sleep(0)
        await limiter.acquire("integration@acme.amocrm.ru")
        grants.append(fake.now)

    await asyncio.gather(*(call() for _ in range(1000)))
    assert len(grants) == 1000
    assert max_in_window(grants, 1.0) == 7
    # the bound holds with the margin too, and pacing is not slower than needed
    assert max_in_window(grants, 1.0 + limiter.margin - 1e-6) == 7
    assert grants[-1] == pytest.approx((1000 // 7 - 1 + (1000 % 7 > 0)) * 1.05, abs=1e-6)


async def test_bound_holds_with_random_arrivals() -> None:
    fake = FakeTime()
    limiter = InMemoryRateLimiter(7, clock=fake.clock, sleep=fake.sleep, margin=0.0)
    grants: list[float] = []
    rng = random.Random(4)

    async def call(delay: float) -> None:
        await fake.sleep(delay)
        await limiter.acquire("k")
        grants.append(fake.now)

    await asyncio.gather(*(call(rng.random() * 20) for _ in range(300)))
    assert max_in_window(grants, 1.0) <= 7


async def test_waiters_are_served_in_arrival_order() -> None:
    fake = FakeTime()
    limiter = InMemoryRateLimiter(2, clock=fake.clock, sleep=fake.sleep)
    served: list[int] = []

    async def call(i: int) -> None:
        await limiter.acquire("k")
        served.append(i)

    tasks = []
    for i in range(30):
        tasks.append(asyncio.create_task(call(i)))
        await asyncio.sleep(0)  # each task reaches the limiter before the next starts
    await asyncio.gather(*tasks)
    assert served == list(range(30))


async def test_keys_are_independent() -> None:
    fake = FakeTime()
    limiter = InMemoryRateLimiter(7, clock=fake.clock, sleep=fake.sleep)
    for _ in range(7):
        await limiter.acquire("one@acme.amocrm.ru")
        await limiter.acquire("two@acme.amocrm.ru")
    assert fake.now == 0.0
    await limiter.acquire("one@acme.amocrm.ru")
    assert fake.now == pytest.approx(1.05)


async def test_pause_holds_every_request_for_the_key() -> None:
    fake = FakeTime()
    limiter = InMemoryRateLimiter(7, clock=fake.clock, sleep=fake.sleep)
    await limiter.pause("k", 3.0)
    await limiter.pause("k", 1.0)  # a shorter pause never shortens a longer one
    await limiter.acquire("other")
    assert fake.now == 0.0
    await limiter.acquire("k")
    assert fake.now == pytest.approx(3.0)


async def test_cancelled_waiter_does_not_block_the_queue() -> None:
    limiter = InMemoryRateLimiter(1, per=0.05, margin=0.0)
    await limiter.acquire("k")
    waiter = asyncio.create_task(limiter.acquire("k"))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.wait_for(limiter.acquire("k"), 1.0)


def test_limiter_satisfies_the_protocol_and_validates() -> None:
    assert isinstance(InMemoryRateLimiter(), RateLimitBackend)
    with pytest.raises(ValueError, match="rate"):
        InMemoryRateLimiter(0)
    with pytest.raises(ValueError, match="per"):
        InMemoryRateLimiter(7, per=0)
