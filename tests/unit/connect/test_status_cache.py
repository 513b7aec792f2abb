"""The status answers of ``GET /amocrm/status``: served again only while younger than the TTL and
while this process has finished no write unit since; misses at the same moment share one read.
The clock is injected; nothing sleeps."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from amobridge.connect.status_cache import StatusCache

TTL = 0.5


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


class Reader:
    """A status read that counts its calls and answers with the current ``value``."""

    def __init__(self) -> None:
        self.calls = 0
        self.value: dict[str, Any] = {"status": "active", "connected": True}
        self.hold: asyncio.Event | None = None
        self.reached = asyncio.Event()
        self.during: Any = None  # run inside the read, after the answer was taken

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        answer = dict(self.value)
        self.reached.set()
        if self.hold is not None:
            await self.hold.wait()
        if self.during is not None:
            self.during()
        return answer


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(clock: Clock) -> StatusCache:
    return StatusCache(TTL, clock=clock)


async def test_an_answer_is_served_again_until_it_is_ttl_old(
    cache: StatusCache, clock: Clock
) -> None:
    read = Reader()
    first = await cache.fetch("alice", 7, read)
    read.value = {"status": "disconnected", "connected": False}  # changed by another process
    clock.now += TTL - 0.01
    assert await cache.fetch("alice", 7, read) == first
    assert read.calls == 1
    clock.now += 0.01
    assert (await cache.fetch("alice", 7, read))["status"] == "disconnected"
    assert read.calls == 2


async def test_a_write_unit_of_this_process_makes_every_answer_stale_at_once(
    cache: StatusCache,
) -> None:
    read = Reader()
    await cache.fetch("alice", 7, read)
    read.value = {"status": "disconnected", "connected": False}
    assert (await cache.fetch("alice", 8, read))["status"] == "disconnected"  # no clock change
    assert read.calls == 2


async def test_a_write_that_ends_during_the_read_is_not_hidden_by_its_answer(
    cache: StatusCache,
) -> None:
    """The generation is the one from before the read: an answer that may predate a write
    finished meanwhile is never served once the caller sees the new generation."""
    generation = {"now": 7}
    read = Reader()
    read.during = lambda: generation.update(now=8)  # a write unit ends while the read runs
    await cache.fetch("alice", generation["now"], read)
    read.during = None
    await cache.fetch("alice", generation["now"], read)
    assert read.calls == 2


async def test_owners_have_answers_of_their_own(cache: StatusCache) -> None:
    alice, bob = Reader(), Reader()
    bob.value = {"status": "not_connected", "connected": False}
    assert (await cache.fetch("alice", 1, alice))["connected"] is True
    assert (await cache.fetch("bob", 1, bob))["connected"] is False
    assert (await cache.fetch("alice", 1, bob))["connected"] is True
    assert (alice.calls, bob.calls) == (1, 1)


async def test_a_caller_cannot_change_the_remembered_answer(cache: StatusCache) -> None:
    read = Reader()
    answer = await cache.fetch("alice", 1, read)
    answer["connected"] = False
    answer["disconnected"] = True
    assert await cache.fetch("alice", 1, read) == {"status": "active", "connected": True}


async def test_misses_at_the_same_moment_share_one_read(cache: StatusCache) -> None:
    read = Reader()
    read.hold = asyncio.Event()
    waiting = [asyncio.ensure_future(cache.fetch("alice", 3, read)) for _ in range(16)]
    await read.reached.wait()
    for _ in range(5):
        await asyncio.sleep(0)  # every other request has had its chance to start a read
    read.hold.set()
    answers = await asyncio.gather(*waiting)
    assert read.calls == 1
    assert all(a == answers[0] for a in answers)
    answers[0]["connected"] = False  # each caller got a copy of its own
    assert answers[1]["connected"] is True


async def test_a_miss_after_a_write_does_not_join_a_read_from_before_it(
    cache: StatusCache,
) -> None:
    before = Reader()
    before.hold = asyncio.Event()
    old = asyncio.ensure_future(cache.fetch("alice", 3, before))
    await before.reached.wait()
    after = Reader()
    after.value = {"status": "disconnected", "connected": False}
    assert (await cache.fetch("alice", 4, after))["status"] == "disconnected"
    before.hold.set()
    await old
    assert (await cache.fetch("alice", 4, after))["status"] == "disconnected"
    assert after.calls == 1


async def test_a_failed_read_is_not_remembered(cache: StatusCache) -> None:
    calls = 0

    async def broken() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        raise OSError("database is unavailable")

    for _ in range(2):
        with pytest.raises(OSError, match="unavailable"):
            await cache.fetch("alice", 1, broken)
    assert calls == 2


async def test_ttl_zero_reads_every_time(clock: Clock) -> None:
    cache = StatusCache(0, clock=clock)
    read = Reader()
    for _ in range(3):
        await cache.fetch("alice", 1, read)
    assert read.calls == 3


async def test_the_cache_keeps_a_bounded_number_of_owners(clock: Clock) -> None:
    cache = StatusCache(TTL, clock=clock, size=2)
    read = Reader()
    for owner in ("a", "b", "c"):
        await cache.fetch(owner, 1, read)
    await cache.fetch("c", 1, read)
    await cache.fetch("b", 1, read)
    assert read.calls == 3
    await cache.fetch("a", 1, read)  # the oldest was let go
    assert read.calls == 4
