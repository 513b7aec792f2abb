"""The read path of an authenticated request, on SQLite and PostgreSQL:

- a read unit (``Database.read()``) is not blocked by an open write transaction — on SQLite the
  write holds ``BEGIN IMMEDIATE``'s lock, the read takes none and reads the last commit from the
  WAL;
- a read unit cannot write (its connections are read-only);
- on PostgreSQL a read runs on an autocommit connection (no ``BEGIN``/``ROLLBACK`` round trips);
- every write unit advances ``Database.write_generation``;
- ``GET /amocrm/status`` shows a change made through this process at once and one made through
  another process within ``connection_check_ms`` (an injected clock, nothing sleeps).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError

from amobridge.connect.status_cache import StatusCache
from amobridge.storage.db import Database
from amobridge.storage.tables import ApiKey, Connection
from database_support import fresh_database

READ_BOUND = 10.0
"""Seconds a read may take before the test calls it blocked: far above any real read, far below
SQLite's 30 s busy timeout, so a read that queues behind the write lock fails instead of hanging."""


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.dispose()


async def key_names(db: Database) -> set[str]:
    async with db.read() as session:
        return set((await session.scalars(select(ApiKey.name))).all())


def api_key(name: str) -> ApiKey:
    return ApiKey(name=name, prefix=name[:8], key_hash=name.ljust(64, "0"), role="app")


async def test_a_read_is_not_blocked_by_an_open_write_transaction(db: Database) -> None:
    async with db.transaction() as session:
        session.add(api_key("first"))
    async with db.transaction() as session:
        session.add(api_key("pending"))
        await session.flush()  # the row is written, its transaction still open (and locking)
        seen = await asyncio.wait_for(key_names(db), READ_BOUND)
        assert seen == {"first"}  # the last committed state, not the open write
    assert await key_names(db) == {"first", "pending"}


async def write_in_a_read_unit(db: Database) -> None:
    async with db.read() as session:
        session.add(api_key("sneaky"))
        await session.flush()


async def test_a_read_unit_cannot_write(db: Database) -> None:
    """Its connections are read-only: a write fails instead of being quietly thrown away (or, in
    autocommit, kept)."""
    with pytest.raises(DBAPIError, match=r"(?i)read.?only"):
        await write_in_a_read_unit(db)
    assert await key_names(db) == set()


@pytest.mark.postgres
async def test_a_postgres_read_opens_no_transaction(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    with fresh_database(request, "postgres", tmp_path) as url:
        db = Database(url)
        try:
            async with db.read() as session:
                raw = await (await session.connection()).get_raw_connection()
                assert raw.driver_connection.autocommit is True
            async with db.transaction() as session:
                raw = await (await session.connection()).get_raw_connection()
                assert raw.driver_connection.autocommit is False
        finally:
            await db.dispose()


async def write_then_fail(db: Database) -> None:
    async with db.transaction() as session:
        session.add(api_key("rolled-back"))
        raise RuntimeError("rolled back")


async def test_every_write_unit_advances_the_write_generation(db: Database) -> None:
    """Committed or rolled back: an answer read before either must be read again."""
    start = db.write_generation
    async with db.transaction() as session:
        session.add(api_key("committed"))
    assert db.write_generation == start + 1
    with pytest.raises(RuntimeError, match="rolled back"):
        await write_then_fail(db)
    assert db.write_generation == start + 2
    assert await key_names(db) == {"committed"}
    assert db.write_generation == start + 2  # a read unit is not a write


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def status(stack: Any, owner: str) -> dict[str, Any]:
    reply = await stack.http.get(
        "/amocrm/status", params={"owner": owner}, headers=stack.app_headers()
    )
    assert reply.status_code == 200, reply.text
    found: dict[str, Any] = reply.json()
    return found


async def test_status_shows_this_process_changes_at_once_and_others_within_the_bound(
    stack: Any,
) -> None:
    ttl = stack.settings.amo.connection_check_ms / 1000
    assert ttl > 0
    clock = Clock()
    stack.services.connect.statuses = StatusCache(ttl, clock=clock)

    assert (await status(stack, "polled"))["status"] == "not_connected"
    imported = await stack.http.post(
        "/amocrm/tokens",
        json={"owner": "polled", "domain": "acme.amocrm.ru", "access_token": "long-lived-x"},
        headers=stack.admin_headers(),
    )
    assert imported.status_code == 201, imported.text
    shown = await status(stack, "polled")  # no clock change: this process wrote
    assert shown["connected"] is True
    assert shown["hasTokens"] is True
    assert shown["longLived"] is True
    assert shown["domain"] == "acme.amocrm.ru"
    assert "long-lived-x" not in str(shown)
    # The API key's first use this minute is recorded by a write of its own, off the request's
    # path; once it has landed, the next status read is cached for good.
    await stack.services.auth.aclose()
    assert (await status(stack, "polled"))["status"] == "active"

    # Another process (its own Database, its own write generation) disconnects the owner.
    elsewhere = Database(stack.settings.database.url)
    try:
        async with elsewhere.transaction() as session:
            await session.execute(
                update(Connection)
                .where(Connection.owner == "polled")
                .values(status="disconnected", access_token_enc=None)
            )
    finally:
        await elsewhere.dispose()
    clock.now += ttl - 0.01
    assert (await status(stack, "polled"))["status"] == "active"  # within the bound
    clock.now += 0.01
    gone = await status(stack, "polled")
    assert (gone["status"], gone["connected"], gone["hasTokens"]) == (
        "disconnected",
        False,
        False,
    )

    # A disconnect through this process shows at once again.
    await stack.http.post(
        "/amocrm/tokens",
        json={"owner": "polled", "domain": "acme.amocrm.ru", "access_token": "long-lived-y"},
        headers=stack.admin_headers(),
    )
    assert (await status(stack, "polled"))["connected"] is True
    dropped = await stack.http.delete(
        "/amocrm/disconnect", params={"owner": "polled"}, headers=stack.app_headers()
    )
    assert dropped.status_code == 200, dropped.text
    assert (await status(stack, "polled"))["status"] == "disconnected"
