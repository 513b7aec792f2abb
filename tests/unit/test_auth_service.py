"""API keys on the request path: a checked key costs no database read for ``cache_seconds``, a
revoked one stops working once its check expires, ``last_used_at`` is written at most once a
minute per key, and requests that find a key unchecked together share one read.

A real SQLite database (a copy of the migrated template) behind a wrapper that counts units of
work; the clock is injected, nothing sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import select, update

from amobridge.auth.service import CACHE_SECONDS, TOUCH_EVERY_SECONDS, AuthService
from amobridge.errors import Unauthorized
from amobridge.settings import SecuritySettings
from amobridge.storage.db import Database
from amobridge.storage.tables import ApiKey
from database_support import DatabaseTemplates


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingDatabase:
    """The real database, counting the read and write units opened through it. ``hold`` makes
    reads wait until it is set (``reached`` tells that one is waiting), so a test can line
    requests up behind one read."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.reads = 0
        self.writes = 0
        self.hold: asyncio.Event | None = None
        self.reached = asyncio.Event()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Any]:
        self.reads += 1
        self.reached.set()
        if self.hold is not None:
            await self.hold.wait()
        async with self.db.read() as session:
            yield session

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        self.writes += 1
        async with self.db.transaction() as session:
            yield session


@pytest.fixture
async def database(
    database_templates: DatabaseTemplates, tmp_path: Path
) -> AsyncIterator[Database]:
    db = Database(database_templates.sqlite_copy(tmp_path / "amobridge.db"))
    yield db
    await db.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def counted(database: Database) -> CountingDatabase:
    return CountingDatabase(database)


@pytest.fixture
async def auth(counted: CountingDatabase, clock: Clock) -> AsyncIterator[AuthService]:
    service = AuthService(cast(Database, counted), SecuritySettings(), clock=clock)
    yield service
    # Its last_used_at writes run in the background: let them end before the database closes
    # (a write still running at dispose leaks its connection).
    await service.aclose()


async def new_key(auth: AuthService, database: Database, name: str = "host-app") -> str:
    async with database.transaction() as session:
        return await auth.create_api_key(session, name=name, role="app")


async def revoke_all(database: Database) -> None:
    async with database.transaction() as session:
        await session.execute(update(ApiKey).values(revoked_at=datetime.now(UTC)))


async def last_used(database: Database, name: str) -> datetime | None:
    async with database.read() as session:
        found: datetime | None = await session.scalar(
            select(ApiKey.last_used_at).where(ApiKey.name == name)
        )
        return found


async def test_a_checked_key_is_not_read_again_within_the_cache_time(
    auth: AuthService, database: Database, counted: CountingDatabase, clock: Clock
) -> None:
    key = await new_key(auth, database)
    first = await auth.authenticate(f"Bearer {key}", None)
    assert (first.role, first.name) == ("app", "host-app")
    assert counted.reads == 1
    checked = clock.now
    for step in range(1, 51):
        clock.now = checked + step * (CACHE_SECONDS - 0.01) / 50
        assert await auth.authenticate(f"Bearer {key}", None) == first
    assert counted.reads == 1
    clock.now = checked + CACHE_SECONDS  # the check is now CACHE_SECONDS old: read once more
    assert await auth.authenticate(None, key) == first  # X-API-Key is the same key
    assert counted.reads == 2


async def test_a_revoked_key_stops_working_once_its_check_expires(
    auth: AuthService, database: Database, clock: Clock
) -> None:
    key = await new_key(auth, database)
    await auth.authenticate(f"Bearer {key}", None)
    checked = clock.now
    await revoke_all(database)
    clock.now = checked + CACHE_SECONDS - 0.01
    await auth.authenticate(f"Bearer {key}", None)  # the documented bound: still checked out
    clock.now = checked + CACHE_SECONDS
    with pytest.raises(Unauthorized, match="revoked"):
        await auth.authenticate(f"Bearer {key}", None)
    clock.now += 3600  # and it stays refused: a refusal is never remembered as a pass
    with pytest.raises(Unauthorized):
        await auth.authenticate(f"Bearer {key}", None)


async def test_an_unknown_key_is_refused_and_a_new_key_works_at_once(
    auth: AuthService, database: Database, counted: CountingDatabase
) -> None:
    with pytest.raises(Unauthorized):
        await auth.authenticate("Bearer amb_00000000_not-a-key", None)
    key = await new_key(auth, database)
    assert (await auth.authenticate(f"Bearer {key}", None)).name == "host-app"
    assert counted.reads == 2


async def test_last_used_at_is_written_at_most_once_a_minute_per_key(
    auth: AuthService, database: Database, counted: CountingDatabase, clock: Clock
) -> None:
    one = await new_key(auth, database, "one")
    two = await new_key(auth, database, "two")
    assert await last_used(database, "one") is None
    await auth.authenticate(f"Bearer {one}", None)
    await auth.aclose()  # the write runs off the request's path: wait for it
    assert counted.writes == 1
    stamped = await last_used(database, "one")
    assert stamped is not None
    touched = clock.now
    for step in range(1, 121):  # two requests a second for a minute, less a hair
        clock.now = touched + step * (TOUCH_EVERY_SECONDS - 0.01) / 120
        await auth.authenticate(f"Bearer {one}", None)
    await auth.aclose()
    assert counted.writes == 1
    assert await last_used(database, "one") == stamped
    await auth.authenticate(f"Bearer {two}", None)  # another key keeps its own minute
    await auth.aclose()
    assert counted.writes == 2
    clock.now = touched + TOUCH_EVERY_SECONDS
    await auth.authenticate(f"Bearer {one}", None)
    await auth.aclose()
    assert counted.writes == 3
    later = await last_used(database, "one")
    assert later is not None
    assert later >= stamped


async def test_a_failing_last_used_write_never_fails_the_request(
    auth: AuthService, database: Database, counted: CountingDatabase, clock: Clock
) -> None:
    key = await new_key(auth, database)

    @asynccontextmanager
    async def broken() -> AsyncIterator[Any]:
        raise OSError("database is locked")
        yield  # pragma: no cover - never reached

    counted.transaction = broken  # type: ignore[method-assign]
    principal = await auth.authenticate(f"Bearer {key}", None)
    assert principal.name == "host-app"
    await auth.aclose()  # the failure was logged, not raised
    assert await last_used(database, "host-app") is None
    clock.now += 1  # and it is tried again on the next request, not a minute later
    counted.transaction = database.transaction  # type: ignore[method-assign]
    await auth.authenticate(f"Bearer {key}", None)
    await auth.aclose()
    assert await last_used(database, "host-app") is not None


async def test_requests_that_find_a_key_unchecked_together_share_one_read(
    auth: AuthService, database: Database, counted: CountingDatabase
) -> None:
    key = await new_key(auth, database)
    counted.hold = asyncio.Event()
    waiting = [asyncio.ensure_future(auth.authenticate(f"Bearer {key}", None)) for _ in range(16)]
    await counted.reached.wait()  # the first request is at the database: the rest queue
    for _ in range(5):
        await asyncio.sleep(0)  # give the others every chance to open a read of their own
    counted.hold.set()
    principals = await asyncio.gather(*waiting)
    assert {p.name for p in principals} == {"host-app"}
    assert counted.reads == 1


async def test_a_caller_that_goes_away_does_not_cancel_the_shared_read(
    auth: AuthService, database: Database, counted: CountingDatabase
) -> None:
    key = await new_key(auth, database)
    counted.hold = asyncio.Event()
    leaver = asyncio.ensure_future(auth.authenticate(f"Bearer {key}", None))
    stayer = asyncio.ensure_future(auth.authenticate(f"Bearer {key}", None))
    await counted.reached.wait()
    leaver.cancel()
    counted.hold.set()
    assert (await stayer).name == "host-app"
    with pytest.raises(asyncio.CancelledError):
        await leaver
    assert counted.reads == 1
