"""The ``TokenStore`` contract, one suite for every implementation: the SDK's
``InMemoryTokenStore`` and ``JsonFileTokenStore``, and the service's ``DatabaseTokenStore`` on
SQLite and on PostgreSQL.

The SDK's providers use a store one way (``amo/auth/providers.py``): take ``lock(key)``, load,
refresh, ``save`` under the same lock, release. So the contract saves under the lock too, and
the lock stays exclusive until its block ends, saves or not. What a provider needs back from
``load`` is the access and refresh tokens, their expiry, ``issued_at`` and the account domain.

The stores that share their pairs beyond one object (the file, the database) must also share the
lock: a *peer*, another store on the same storage as another process would build it, gives up on
a held lock after its timeout, takes it once released, and sees every save at once.

Implementation-specific behaviour lives elsewhere: the JSON file's format and permissions in
``tests/unit/amo/test_sdk_token_stores.py``, the database store's lease rules (lease lost,
superseded pair, disconnected row) in ``test_connection_invariants.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from amobridge.amo.auth import InMemoryTokenStore, JsonFileTokenStore, TokenSet, TokenStore
from amobridge.errors import AmobridgeError
from database_support import fresh_database

HOST = "acme.amocrm.ru"
PAIR = TokenSet("access-1", "refresh-1", 1_700_000_000.25, issued_at=1_699_913_600.5, domain=HOST)
NEWER = TokenSet("access-2", "refresh-2", 1_700_086_400.0, issued_at=1_700_000_000.0, domain=HOST)
OTHER = TokenSet("access-3", None, 1_700_003_600.0, domain="beta.kommo.com")
PEER_LOCK_TIMEOUT = 0.05  # seconds a peer waits for a held lock before it gives up


# --- the database store: the one place this suite touches the service's API ---------------------


@contextlib.asynccontextmanager
async def database_token_stores(
    url: str, owners: Sequence[str]
) -> AsyncIterator[tuple[list[str], Callable[[float | None], TokenStore]]]:
    """Connections for ``owners`` on the migrated database at ``url``, and a factory of
    ``DatabaseTokenStore``s over them: each store has its own engine and lease holder (another
    process), and waits ``lock_timeout`` seconds for a held lease (None: the store's default).

    Built only here, so a change to the store, the repositories or their modules is adapted in
    this one function. Yields the connection ids (the stores' keys) and the factory."""
    from amobridge.connect.repository import ConnectionRepository, Tokens
    from amobridge.connect.token_store import DatabaseTokenStore
    from amobridge.storage.crypto import Keyring, generate_key
    from amobridge.storage.db import Database

    keyring = Keyring([generate_key()])
    databases = [Database(url)]
    try:
        async with databases[0].transaction() as session:
            repository = ConnectionRepository(session, keyring)
            rows = [
                await repository.connect(
                    owner=owner,
                    integration_id=None,
                    host=HOST,
                    account_id=None,
                    tokens=Tokens("initial-access", "initial-refresh", None),
                )
                for owner in owners
            ]
            ids = [row.id for row in rows]

        def new_store(lock_timeout: float | None = None) -> TokenStore:
            db = Database(url)
            databases.append(db)
            if lock_timeout is None:
                return DatabaseTokenStore(db, keyring)
            return DatabaseTokenStore(db, keyring, wait_seconds=lock_timeout)

        yield ids, new_store
    finally:
        for db in databases:
            await db.dispose()


# --- the stores under test ----------------------------------------------------------------------


@dataclass
class StoreCase:
    """A store under test with the keys it can hold pairs for."""

    store: TokenStore
    keys: tuple[str, str]  # two keys pairs may be saved under (the database: two connections)
    unknown: str  # a key nothing was ever stored for
    # Another store on the same storage (another process), giving up on a held lock after the
    # given seconds; None when nothing is shared beyond the object (the in-memory store).
    peer: Callable[[float | None], TokenStore] | None


@contextlib.asynccontextmanager
async def store_case(
    kind: str, request: pytest.FixtureRequest, directory: Path
) -> AsyncIterator[StoreCase]:
    if kind == "memory":
        yield StoreCase(InMemoryTokenStore(), ("k1", "k2"), "never-saved", None)
        return
    if kind == "json":
        path = directory / "tokens.json"

        def json_store(lock_timeout: float | None = None) -> TokenStore:
            if lock_timeout is None:
                return JsonFileTokenStore(path)
            return JsonFileTokenStore(path, lock_timeout=lock_timeout)

        yield StoreCase(json_store(), ("k1", "k2"), "never-saved", json_store)
        return
    database = kind.removeprefix("database-")
    with fresh_database(request, database, directory) as url:
        async with database_token_stores(url, ["owner-1", "owner-2"]) as (ids, new_store):
            yield StoreCase(new_store(None), (ids[0], ids[1]), uuid.uuid4().hex, new_store)


# The service's store on each database the service runs on (PostgreSQL: skipped locally without
# a server, a failure under CI, as every PostgreSQL test).
DATABASE_STORES = ["database-sqlite", pytest.param("database-postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=["memory", "json", *DATABASE_STORES])
async def case(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreCase]:
    async with store_case(request.param, request, tmp_path) as built:
        yield built


@pytest.fixture(params=["json", *DATABASE_STORES])
async def shared(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreCase]:
    """The stores whose pairs outlive the object: every peer sees them and shares the lock."""
    async with store_case(request.param, request, tmp_path) as built:
        assert built.peer is not None
        yield built


def assert_pair(loaded: TokenSet | None, expected: TokenSet) -> None:
    """``loaded`` holds what a provider needs of ``expected`` (``server_time`` and ``token_type``
    are not kept). A pair saved without ``issued_at`` may come back with the time of its save: the
    database store records it, so a fresh short-lived token is not refreshed at once."""
    assert loaded is not None, f"nothing stored, expected {expected!r}"
    assert (loaded.access_token, loaded.refresh_token, loaded.expires_at, loaded.domain) == (
        expected.access_token,
        expected.refresh_token,
        expected.expires_at,
        expected.domain,
    )
    if expected.issued_at is not None:
        assert loaded.issued_at == expected.issued_at
    else:
        assert loaded.issued_at is None or abs(loaded.issued_at - time.time()) < 300


async def save(store: TokenStore, key: str, tokens: TokenSet) -> None:
    """As a provider saves a refreshed pair: under the key's lock."""
    async with store.lock(key):
        await store.save(key, tokens)


# --- every store --------------------------------------------------------------------------------


async def test_is_a_token_store(case: StoreCase) -> None:
    assert isinstance(case.store, TokenStore)


async def test_an_unknown_key_loads_as_none(case: StoreCase) -> None:
    assert await case.store.load(case.unknown) is None
    await save(case.store, case.keys[0], PAIR)
    assert await case.store.load(case.unknown) is None


async def test_save_then_load_returns_the_pair(case: StoreCase) -> None:
    await save(case.store, case.keys[0], PAIR)
    assert_pair(await case.store.load(case.keys[0]), PAIR)


async def test_a_pair_without_refresh_token_or_issue_time_round_trips(case: StoreCase) -> None:
    await save(case.store, case.keys[0], OTHER)
    assert_pair(await case.store.load(case.keys[0]), OTHER)


async def test_a_save_outside_the_lock_is_stored_too(case: StoreCase) -> None:
    """Providers save under the lock; a pair stored without it (a script, an import) counts."""
    await case.store.save(case.keys[0], PAIR)
    assert_pair(await case.store.load(case.keys[0]), PAIR)


async def test_save_overwrites_the_previous_pair(case: StoreCase) -> None:
    await save(case.store, case.keys[0], PAIR)
    await save(case.store, case.keys[0], NEWER)
    assert_pair(await case.store.load(case.keys[0]), NEWER)


async def test_two_saves_under_one_lock_keep_the_last(case: StoreCase) -> None:
    """The lock is held until its block ends, whatever the block saves meanwhile."""
    async with case.store.lock(case.keys[0]):
        await case.store.save(case.keys[0], PAIR)
        assert_pair(await case.store.load(case.keys[0]), PAIR)
        await case.store.save(case.keys[0], NEWER)
    assert_pair(await case.store.load(case.keys[0]), NEWER)


async def test_keys_hold_their_own_pairs(case: StoreCase) -> None:
    first, second = case.keys
    await save(case.store, first, PAIR)
    await save(case.store, second, OTHER)
    await save(case.store, first, NEWER)
    assert_pair(await case.store.load(first), NEWER)
    assert_pair(await case.store.load(second), OTHER)


async def test_the_lock_admits_one_holder_at_a_time(case: StoreCase) -> None:
    order: list[str] = []
    key = case.keys[0]

    async def hold(name: str, inside: asyncio.Event, release: asyncio.Event) -> None:
        async with case.store.lock(key):
            order.append(f"{name} in")
            inside.set()
            await release.wait()
            order.append(f"{name} out")

    first_in, second_in, release = asyncio.Event(), asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(hold("a", first_in, release))
    await first_in.wait()
    second = asyncio.create_task(hold("b", second_in, release))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not second_in.is_set()
    release.set()
    await asyncio.wait_for(asyncio.gather(first, second), 10)
    assert order == ["a in", "a out", "b in", "b out"]


async def test_keys_lock_independently(case: StoreCase) -> None:
    first, second = case.keys
    async with case.store.lock(first), asyncio.timeout(10), case.store.lock(second):
        await case.store.save(second, OTHER)
    assert_pair(await case.store.load(second), OTHER)


async def test_the_lock_is_released_when_its_block_raises(case: StoreCase) -> None:
    key = case.keys[0]
    with pytest.raises(RuntimeError, match="refresh failed"):
        async with case.store.lock(key):
            raise RuntimeError("refresh failed")
    async with asyncio.timeout(10), case.store.lock(key):
        await case.store.save(key, PAIR)
    if case.peer is not None:  # released for other processes too, not only in this one
        async with case.peer(PEER_LOCK_TIMEOUT).lock(key):
            pass
    assert_pair(await case.store.load(key), PAIR)


# --- stores shared between processes ------------------------------------------------------------


async def test_a_peer_sees_every_save_at_once(shared: StoreCase) -> None:
    assert shared.peer is not None
    key = shared.keys[0]
    peer = shared.peer(None)
    await save(shared.store, key, PAIR)
    assert_pair(await peer.load(key), PAIR)
    await save(peer, key, NEWER)  # the other way round: nothing stale is served from memory
    assert_pair(await shared.store.load(key), NEWER)


async def test_a_peer_waits_for_a_held_lock_and_gives_up_after_its_timeout(
    shared: StoreCase,
) -> None:
    assert shared.peer is not None
    key = shared.keys[0]
    peer = shared.peer(PEER_LOCK_TIMEOUT)
    async with shared.store.lock(key):
        with pytest.raises(AmobridgeError):
            async with peer.lock(key):
                pytest.fail("a peer entered a lock another process holds")
    async with peer.lock(key):  # released: the same peer gets in
        await peer.save(key, NEWER)
    assert_pair(await shared.store.load(key), NEWER)


async def test_a_holder_that_saved_still_holds_the_lock_until_its_block_ends(
    shared: StoreCase,
) -> None:
    assert shared.peer is not None
    key = shared.keys[0]
    peer = shared.peer(PEER_LOCK_TIMEOUT)
    async with shared.store.lock(key):
        await shared.store.save(key, PAIR)
        with pytest.raises(AmobridgeError):
            async with peer.lock(key):
                pytest.fail("a peer entered a lock another process still holds")


async def test_a_waiting_peer_gets_the_lock_once_it_is_released(shared: StoreCase) -> None:
    assert shared.peer is not None
    key = shared.keys[0]
    peer = shared.peer(None)
    entered = asyncio.Event()

    async def take() -> TokenSet | None:
        async with peer.lock(key):
            entered.set()
            return await peer.load(key)

    async with shared.store.lock(key):
        waiter = asyncio.create_task(take())
        for _ in range(20):
            await asyncio.sleep(0)
        assert not entered.is_set()
        await shared.store.save(key, PAIR)
    # The waiter got in after the holder left, and read what the holder saved.
    assert_pair(await asyncio.wait_for(waiter, 10), PAIR)


async def test_peers_lock_different_keys_independently(shared: StoreCase) -> None:
    assert shared.peer is not None
    first, second = shared.keys
    peer = shared.peer(PEER_LOCK_TIMEOUT)
    async with shared.store.lock(first), peer.lock(second):
        await shared.store.save(first, PAIR)
        await peer.save(second, OTHER)
    assert_pair(await peer.load(first), PAIR)
    assert_pair(await shared.store.load(second), OTHER)
