"""The SDK's ``RateLimitBackend`` shared by every process through the database (invariant 4).

Why the database and not Redis: the database is already required and already shared by every
replica and worker, so pacing needs no extra server; at amoCRM's 7 requests/second per connection
the load is a few small writes per second per busy connection, well within SQLite (WAL) and
PostgreSQL. (Redis would add a second stateful service to run and back up for no gain here.)

Each key (one per connection) has a row holding the times of its latest ``rate`` grants. To admit a
request, a process locks the row (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN
IMMEDIATE`` already holds the write lock), computes the earliest slot that keeps every window of
``per + margin`` seconds at ``rate`` grants or fewer — now, or ``per + margin`` after the
``rate``-th latest grant — writes it (a reservation when it lies in the future), commits, and
sleeps until its slot. No process ever waits with a transaction open, and reservations queue
requests first come, first served across processes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from amobridge.storage.db import Database
from amobridge.storage.tables import RateLimitSlot

DEFAULT_MARGIN = 0.05


class DatabaseRateLimiter:
    def __init__(
        self,
        db: Database,
        rate: int = 7,
        per: float = 1.0,
        *,
        margin: float = DEFAULT_MARGIN,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate < 1 or per <= 0 or margin < 0:
            raise ValueError("rate must be ≥ 1, per > 0 and margin ≥ 0")
        self._db = db
        self.rate = rate
        self._window = per + margin
        self._clock = clock
        self._sleep = sleep
        self._local: dict[str, asyncio.Lock] = {}

    def __repr__(self) -> str:
        return f"DatabaseRateLimiter(rate={self.rate}, window={self._window:.3f})"

    async def acquire(self, key: str) -> None:
        # Callers in this process queue locally first: one database round trip per grant.
        async with self._local.setdefault(key, asyncio.Lock()):
            slot = await self._reserve(key)
            wait = slot - self._clock()
            if wait > 0:
                await self._sleep(wait)

    async def pause(self, key: str, seconds: float) -> None:
        if seconds <= 0:
            return
        async with self._db.transaction() as session:
            row = await self._row(session, key)
            row.paused_until = max(row.paused_until or 0.0, self._clock() + seconds)

    async def _reserve(self, key: str) -> float:
        async with self._db.transaction() as session:
            row = await self._row(session, key)
            now = self._clock()
            grants = sorted(g for g in (row.grants or []) if g > now - self._window)
            slot = max(now, row.paused_until or 0.0)
            if len(grants) >= self.rate:
                slot = max(slot, grants[-self.rate] + self._window)
            grants.append(slot)
            row.grants = sorted(grants)[-self.rate :]
            return slot

    async def _row(self, session: AsyncSession, key: str) -> RateLimitSlot:
        insert = pg_insert if self._db.dialect == "postgresql" else sqlite_insert
        await session.execute(
            insert(RateLimitSlot)
            .values(key=key, grants=[], paused_until=0.0)
            .on_conflict_do_nothing(index_elements=["key"])
        )
        row = await session.scalar(
            select(RateLimitSlot).where(RateLimitSlot.key == key).with_for_update()
        )
        assert row is not None
        return row
