"""The pacing rule (amoCRM: at most 7 requests per second per integration and account) on a
virtual clock: a slot counts from acquire until its reply plus one window, so the *arrivals* stay
under the limit whatever the latency; fractional rates; FIFO order, pauses, slot timeouts."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from amobridge.amo.ratelimit import InMemoryRateLimiter, PaceWindow, RateLimitBackend

KEY = "integration@acme.amocrm.ru"


class VirtualTime:
    """A clock that moves only when every task is asleep: then it jumps to the earliest wake-up.
    Concurrent sleepers overlap as on a real clock, and a run of minutes takes milliseconds."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), next(self._seq), future))
        await future

    async def run(self, *coros: Coroutine[Any, Any, Any]) -> list[Any]:
        tasks = [asyncio.ensure_future(c) for c in coros]
        while True:
            for _ in range(30):  # let every runnable task run until it sleeps or waits
                await asyncio.sleep(0)
            if all(t.done() for t in tasks):
                return [t.result() for t in tasks]
            while self._sleepers and self._sleepers[0][2].done():
                heapq.heappop(self._sleepers)  # cancelled sleeps
            if not self._sleepers:
                raise AssertionError("deadlock: tasks wait and nobody sleeps")
            wake, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, wake)
            future.set_result(None)


def most_in_window(times: list[float], window: float) -> int:
    """The most events in any half-open window ``[t, t + window)``."""
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window - 1e-9:
            start += 1
        best = max(best, end - start + 1)
    return best


def request(
    limiter: RateLimitBackend,
    vt: VirtualTime,
    arrivals: list[float],
    *,
    send_delay: Callable[[], float],
    reply_delay: Callable[[], float],
) -> Callable[[], Awaitable[None]]:
    """One API call: acquire, the request travels ``send_delay`` (it *arrives* then), the reply
    travels ``reply_delay``, release."""

    async def call() -> None:
        await limiter.acquire(KEY)
        await vt.sleep(send_delay())
        arrivals.append(vt.now)
        await vt.sleep(reply_delay())
        await limiter.release(KEY)

    return call


async def test_a_delayed_first_send_does_not_make_eight_arrivals_in_a_second() -> None:
    """The measured defect: 30 sequential calls, the first one's send delayed by its connection
    handshake (300 ms). Counting slots from acquire let amoCRM see 8 arrivals within 1 s."""
    vt = VirtualTime()
    limiter = InMemoryRateLimiter(7, clock=vt.clock, sleep=vt.sleep)
    arrivals: list[float] = []
    delays = iter([0.3] + [0.005] * 29)
    call = request(limiter, vt, arrivals, send_delay=lambda: next(delays), reply_delay=lambda: 0.01)

    async def sequential() -> None:
        for _ in range(30):
            await call()

    await vt.run(sequential())
    assert len(arrivals) == 30
    assert most_in_window(arrivals, 1.0) <= 7
    assert most_in_window(arrivals, 1.0 + limiter.margin) <= 7


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_1000_concurrent_calls_with_random_latency_never_exceed_7_arrivals(
    seed: int,
) -> None:
    vt = VirtualTime()
    limiter = InMemoryRateLimiter(7, clock=vt.clock, sleep=vt.sleep)
    rng = random.Random(seed)
    arrivals: list[float] = []
    call = request(
        limiter,
        vt,
        arrivals,
        send_delay=lambda: rng.choice([0.0, 0.002, 0.05, 0.4]) * rng.random(),
        reply_delay=lambda: rng.random() * 0.3,
    )
    await vt.run(*(call() for _ in range(1000)))
    assert len(arrivals) == 1000
    assert most_in_window(arrivals, 1.0 + limiter.margin) <= 7
    # Paced, not starved: 1000 calls at ~7 per (1 s + margin + latency) take ~150-190 s.
    assert vt.now < 1000 / 7 * 1.45


async def test_throughput_approaches_the_rate_at_low_latency() -> None:
    vt = VirtualTime()
    limiter = InMemoryRateLimiter(7, clock=vt.clock, sleep=vt.sleep)
    arrivals: list[float] = []
    call = request(limiter, vt, arrivals, send_delay=lambda: 0.001, reply_delay=lambda: 0.001)
    await vt.run(*(call() for _ in range(700)))
    rate = len(arrivals) / (arrivals[-1] - arrivals[0])
    assert 6.5 < rate <= 7.0  # 7 per (1 s + 50 ms margin + 2 ms latency) ≈ 6.65


@pytest.mark.parametrize(
    ("rate", "capacity", "spacing"), [(2.5, 2, 0.4), (6.5, 6, 1 / 6.5), (0.5, 1, 2.0)]
)
async def test_fractional_rates_keep_floor_per_window_and_the_long_run_rate(
    rate: float, capacity: int, spacing: float
) -> None:
    vt = VirtualTime()
    limiter = InMemoryRateLimiter(rate, clock=vt.clock, sleep=vt.sleep)
    arrivals: list[float] = []
    grants: list[float] = []

    async def call() -> None:
        await limiter.acquire(KEY)
        grants.append(vt.now)
        await vt.sleep(0.001)
        arrivals.append(vt.now)
        await limiter.release(KEY)

    await vt.run(*(call() for _ in range(60)))
    assert most_in_window(arrivals, 1.0) <= capacity
    assert min(b - a for a, b in itertools.pairwise(grants)) >= spacing - 1e-9
    assert (len(grants) - 1) / (grants[-1] - grants[0]) <= rate + 1e-9


async def test_all_slots_busy_waits_for_a_release_then_one_window() -> None:
    vt = VirtualTime()
    limiter = InMemoryRateLimiter(2, per=1.0, margin=0.0, clock=vt.clock, sleep=vt.sleep)
    granted: list[float] = []

    async def slow_call(reply_after: float) -> None:
        await limiter.acquire(KEY)
        granted.append(vt.now)
        await vt.sleep(reply_after)
        await limiter.release(KEY)

    async def third() -> None:
        await vt.sleep(0.01)
        await limiter.acquire(KEY)
        granted.append(vt.now)

    await vt.run(slow_call(5.0), slow_call(7.0), third())
    # two slow requests hold both slots; the first reply comes at 5 s, its slot counts 1 s more
    assert granted == pytest.approx([0.0, 0.5, 6.0])


async def test_waiters_are_served_in_arrival_order() -> None:
    vt = VirtualTime()
    limiter = InMemoryRateLimiter(2, clock=vt.clock, sleep=vt.sleep)
    served: list[int] = []

    async def call(i: int) -> None:
        await vt.sleep(i * 0.001)
        await limiter.acquire(KEY)
        served.append(i)
        await limiter.release(KEY)

    await vt.run(*(call(i) for i in range(30)))
    assert served == list(range(30))


async def test_keys_are_independent() -> None:
    vt = VirtualTime()
    limiter = InMemoryRateLimiter(7, clock=vt.clock, sleep=vt.sleep)
    grants: dict[str, list[float]] = {"one": [], "two": []}

    async def call(key: str) -> None:
        await limiter.acquire(key)
        grants[key].append(vt.now)
        await limiter.release(key)

    await vt.run(*(call(k) for k in ("one", "two") for _ in range(7)))
    assert grants["one"] == grants["two"]
    assert grants["one"][-1] == pytest.approx(6 / 7)


async def test_pause_holds_every_request_for_the_key() -> None:
    vt = VirtualTime()
    limiter = InMemoryRateLimiter(7, clock=vt.clock, sleep=vt.sleep)
    await limiter.pause("k", 3.0)
    await limiter.pause("k", 1.0)  # a shorter pause never shortens a longer one
    await limiter.pause("k", 0.0)
    times: list[float] = []

    async def call(key: str) -> None:
        await limiter.acquire(key)
        times.append(vt.now)

    await vt.run(call("other"))
    await vt.run(call("k"))
    assert times == pytest.approx([0.0, 3.0])


async def test_a_slot_never_released_counts_until_its_timeout_plus_a_window() -> None:
    vt = VirtualTime()
    limiter = InMemoryRateLimiter(1, margin=0.0, slot_timeout=30.0, clock=vt.clock, sleep=vt.sleep)
    times: list[float] = []

    async def forgetful() -> None:
        await limiter.acquire(KEY)  # and never releases (its caller died)
        times.append(vt.now)

    await vt.run(forgetful(), forgetful())
    assert times == pytest.approx([0.0, 31.0])
    # its late release (if one ever comes) does not free the slot granted after it
    await limiter.release(KEY)
    await limiter.release("never-acquired")


async def test_cancelled_waiter_does_not_block_the_queue() -> None:
    vt = VirtualTime()
    limiter = InMemoryRateLimiter(1, clock=vt.clock, sleep=vt.sleep)
    await limiter.acquire(KEY)
    waiter = asyncio.ensure_future(limiter.acquire(KEY))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await limiter.release(KEY)
    done: list[float] = []

    async def next_call() -> None:
        await limiter.acquire(KEY)
        done.append(vt.now)

    await vt.run(next_call())
    assert done == pytest.approx([1.05])


def test_window_continues_a_window_handed_over() -> None:
    """What the cross-process limiter relies on: the next holder loads the release times the
    last one wrote and grants nothing the combined history forbids."""
    first = PaceWindow(3, margin=0.0)
    for t in (0.0, 0.34, 0.68):
        assert first.next_grant(t) <= t
        first.grant(t)
        first.release(t + 0.1)
    assert first.next_grant(1.0) == pytest.approx(1.1)  # the first release + 1 s
    handed = first.ends(1.0)
    assert handed == pytest.approx([0.1, 0.44, 0.78])

    second = PaceWindow(3, margin=0.0)
    second.load(handed, paused_until=0.0)
    # the spacing (1/3 s) counts from the latest release: the grants before it are unknown here
    assert second.next_grant(1.0) == pytest.approx(0.78 + 1 / 3)
    second.grant(0.78 + 1 / 3)
    assert second.next_grant(1.12) == pytest.approx(0.78 + 2 / 3)
    # ends that no longer count are not handed on
    assert second.ends(1.5) == pytest.approx([0.78])


def test_window_trims_its_history_without_changing_a_decision() -> None:
    window = PaceWindow(2, margin=0.0)
    window.load([0.1, 0.2, 0.3, 0.4, 0.5])
    assert window.ends(0.5) == pytest.approx([0.4, 0.5])
    assert window.next_grant(0.5) == pytest.approx(1.4)


def test_limiter_satisfies_the_protocol_and_validates() -> None:
    assert isinstance(InMemoryRateLimiter(), RateLimitBackend)
    assert "rate=6.5" in repr(InMemoryRateLimiter(6.5))
    with pytest.raises(ValueError, match="rate"):
        InMemoryRateLimiter(0)
    with pytest.raises(ValueError, match="rate"):
        InMemoryRateLimiter(float("nan"))
    with pytest.raises(ValueError, match="per"):
        InMemoryRateLimiter(7, per=0)
    with pytest.raises(ValueError, match="slot_timeout"):
        InMemoryRateLimiter(7, slot_timeout=0)
