"""OAuth states and button secrets: signed, expiring, single-use, bound to an owner."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text, update

from amobridge.connect.stores import ButtonSecretStore, StateSigner, StateStore, state_id
from amobridge.storage.crypto import Keyring, generate_key
from amobridge.storage.tables import ButtonSecret, OAuthState


@pytest.fixture
def keyring() -> Keyring:
    return Keyring([generate_key()])


@pytest.fixture
def states() -> StateStore:
    return StateStore(StateSigner(b"k" * 32), timedelta(minutes=10))


async def test_state_single_use(db: Any, states: StateStore) -> None:
    async with db.transaction() as s:
        state = await states.issue(s, owner="user-1", flow="redirect", return_to="app")
    async with db.transaction() as s:
        first = await states.consume(s, state=state)
    assert first.problem is None
    assert first.record is not None
    assert first.record.owner == "user-1"
    assert first.record.return_to == "app"
    async with db.transaction() as s:
        again = await states.consume(s, state=state)
    assert again.problem == "used"


async def test_concurrent_consume_only_one_wins(db: Any, states: StateStore) -> None:
    async with db.transaction() as s:
        state = await states.issue(s, owner="u", flow="redirect")

    async def consume() -> str | None:
        async with db.transaction() as s:
            return (await states.consume(s, state=state)).problem

    results = await asyncio.gather(*(consume() for _ in range(8)))
    assert results.count(None) == 1
    assert results.count("used") == 7


async def test_expired_and_forged_and_unknown(db: Any, states: StateStore) -> None:
    async with db.transaction() as s:
        state = await states.issue(s, owner="u", flow="redirect")
        await s.flush()
        await s.execute(
            update(OAuthState)
            .where(OAuthState.id == state_id(state))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    async with db.transaction() as s:
        assert (await states.consume(s, state=state)).problem == "expired"
        assert (
            await states.consume(s, state=state[:-1] + ("1" if state.endswith("0") else "0"))
        ).problem == "forged"
        other = StateStore(StateSigner(b"k" * 32), timedelta(minutes=10))
        assert (await other.consume(s, state=StateSigner(b"k" * 32).new())).problem == "unknown"
        assert (await states.consume(s, state="garbage")).problem == "forged"


async def test_state_is_not_stored_in_clear(db: Any, states: StateStore) -> None:
    async with db.transaction() as s:
        state = await states.issue(s, owner="u", flow="button")
    async with db.transaction() as s:
        ids = (await s.execute(select(OAuthState.id))).scalars().all()
    assert state not in ids
    assert state_id(state) in ids


async def test_button_secret_used_once_and_encrypted(
    db: Any, states: StateStore, keyring: Keyring
) -> None:
    secrets_store = ButtonSecretStore(keyring, timedelta(minutes=10))
    async with db.transaction() as s:
        state = await states.issue(s, owner="u", flow="button")
        await s.flush()
        assert await secrets_store.put(
            s, state=state, client_id="cid", client_secret="s3cr3t-value"
        )
    async with db.transaction() as s:
        raw = (await s.execute(text("SELECT client_secret_enc FROM button_secrets"))).scalar_one()
        assert "s3cr3t-value" not in raw
        assert await secrets_store.put(s, state=state, client_id="x", client_secret="y") is False
    async with db.transaction() as s:
        assert await secrets_store.take(s, state=state) == ("cid", "s3cr3t-value")
    async with db.transaction() as s:
        assert await secrets_store.take(s, state=state) is None


async def test_expired_button_secret_purged(db: Any, states: StateStore, keyring: Keyring) -> None:
    secrets_store = ButtonSecretStore(keyring, timedelta(minutes=10))
    async with db.transaction() as s:
        state = await states.issue(s, owner="u", flow="button")
        await s.flush()
        await secrets_store.put(s, state=state, client_id="cid", client_secret="sec")
        await s.flush()
        await s.execute(
            update(ButtonSecret).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    async with db.transaction() as s:
        assert await secrets_store.take(s, state=state) is None
        assert await secrets_store.purge_expired(s) == 1
        assert await secrets_store.count(s) == 0


def test_state_signed_before_a_key_rotation_is_still_valid() -> None:
    old = StateSigner(b"old-key")
    state = old.new()
    rotated = StateSigner(b"new-key", b"old-key")
    assert rotated.valid(state)
    assert rotated.valid(rotated.new())
    assert not StateSigner(b"new-key").valid(state)
