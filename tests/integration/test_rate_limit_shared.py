"""Invariant 4: one connection's pace holds across processes sharing the database.

Each "process" here is its own DatabaseRateLimiter on its own engine: they coordinate only
through the database, exactly as separate processes do."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from amobridge.connect.ratelimit import DatabaseRateLimiter
from amobridge.storage.db import Database


async def test_reservations_keep_every_window_under_the_rate(database_url: str) -> None:
    now = 1000.0
    slots: list[float] = []

    def clock() -> float:
        return now

    async def sleep(seconds: float) -> None:  # record the slot, do not wait
        await asyncio.sleep(0)

    databases = [Database(database_url) for _ in range(3)]
    limiters = [
        DatabaseRateLimiter(db, rate=7, per=1.0, margin=0.05, clock=clock, sleep=sleep)
        for db in databases
    ]

    async def grab(limiter: DatabaseRateLimiter) -> None:
        for _ in range(10):
            slot = await limiter._reserve("integration@acme.amocrm.ru")
            slots.append(slot)
            await sleep(slot - now)

    try:
        await asyncio.gather(*(grab(limiter) for limiter in limiters))
    finally:
        for db in databases:
            await db.dispose()
    slots.sort()
    assert len(slots) == 30
    for i in range(len(slots) - 7):
        assert slots[i + 7] - slots[i] >= 1.05 - 1e-9, (i, slots[i], slots[i + 7])
    # 30 grants at 7 per 1.05 s: the last one is reserved ~4 windows ahead, not later.
    assert slots[-1] - now == pytest.approx(4 * 1.05)


async def test_pause_holds_every_process(database_url: str) -> None:
    now = 50.0
    first, second = Database(database_url), Database(database_url)
    try:
        a = DatabaseRateLimiter(first, clock=lambda: now)
        b = DatabaseRateLimiter(second, clock=lambda: now)
        await a.pause("k", 30)
        assert await b._reserve("k") == pytest.approx(80.0)
        await a.pause("k", 0)  # no-op
        assert await b._reserve("k") == pytest.approx(80.0)
    finally:
        await first.dispose()
        await second.dispose()


@pytest.mark.slow
async def test_two_services_stay_under_the_sandbox_limit(stack: Any) -> None:
    """Two service instances on one database, one connection, rate limiting ON in the sandbox:
    30 calls, 0 responses 429 (§7)."""
    from amobridge.services import Services

    await stack.connect("shared")
    await stack.control.patch(
        "/_sandbox/config", json={"rate_limit_enabled": True, "rate_limit_rps": 7}
    )
    other = Services.build(stack.settings, amo_transport=stack.services.clients.transport)
    try:
        async with stack.services.db.transaction() as session:
            row = await stack.services.connections(session).for_owner("shared")
        clients = [
            await stack.services.clients.client(row),
            await other.clients.client(row),
        ]
        calls = [clients[i % 2].account.get() for i in range(30)]
        results = await asyncio.gather(*calls)
        assert all(r.id == stack.account["id"] for r in results)
    finally:
        await other.stop()
    log = (
        await stack.control.get("/_sandbox/requests", params={"path_prefix": "/api/v4/account"})
    ).json()
    statuses = [r["status"] for r in log]
    assert statuses.count(200) == 30
    assert 429 not in statuses
    times = sorted(r["time"] for r in log)
    assert all(times[i + 7] - times[i] > 1.0 for i in range(len(times) - 7))


def test_service_uses_the_database_limiter_by_default(tmp_path: Any) -> None:
    from amobridge.services import Services
    from amobridge.settings import Settings

    settings = Settings(
        database={"url": f"sqlite:///{tmp_path}/x.db"},
        security={"secret_keys": ["k" * 43 + "="]},
    )
    services = Services.build(settings)
    assert isinstance(services.clients._shared_limiter, DatabaseRateLimiter)
    memory = Services.build(
        settings.model_copy(
            update={"amo": settings.amo.model_copy(update={"rate_limit_backend": "memory"})}
        )
    )
    assert memory.clients._shared_limiter is None
