"""Token stores: what only the SDK's in-memory and JSON-file stores promise.

The ``TokenStore`` contract itself (round trip, overwrite, unknown keys, the lock within and
across processes) is one suite for every store, the service's database store included:
``tests/integration/test_token_store_contract.py``.
"""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import pytest

from amobridge.amo.auth import InMemoryTokenStore, JsonFileTokenStore, TokenSet
from amobridge.amo.errors import AmoTokenStoreError

PAIR = TokenSet("access-1", "refresh-1", 1_700_000_000.0, domain="acme.amocrm.ru")
FULL = TokenSet(
    "access-1",
    "refresh-1",
    1_700_000_000.0,
    token_type="Bearer",
    server_time=1_699_999_990,
    issued_at=1_699_913_600.0,
    domain="acme.amocrm.ru",
)


@pytest.mark.parametrize("kind", ["memory", "json"])
async def test_the_sdk_stores_keep_the_whole_token_set(kind: str, tmp_path: Path) -> None:
    """Every field comes back, ``server_time`` included (the database store keeps only what a
    provider reads)."""
    store = InMemoryTokenStore() if kind == "memory" else JsonFileTokenStore(tmp_path / "t.json")
    await store.save("k", FULL)
    assert await store.load("k") == FULL


async def test_json_store_file_is_private_and_readable_json(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "tokens.json"
    store = JsonFileTokenStore(path)
    await store.save("k", PAIR)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    assert data["k"]["refresh_token"] == "refresh-1"
    assert not [
        p
        for p in path.parent.iterdir()
        if p.name.startswith("tokens.json.") and not p.name.endswith(".lock")
    ]


async def test_json_store_lock_gives_up_after_its_timeout(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    ours, theirs = JsonFileTokenStore(path), JsonFileTokenStore(path, lock_timeout=0.05)
    async with ours.lock("k"):
        with pytest.raises(AmoTokenStoreError, match="another process"):
            async with theirs.lock("k"):
                pass


async def test_json_store_refuses_a_file_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text("[1, 2]")
    with pytest.raises(AmoTokenStoreError, match="JSON object"):
        await JsonFileTokenStore(path).load("k")


async def test_json_store_concurrent_saves_keep_every_key(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    stores = [JsonFileTokenStore(path) for _ in range(4)]
    await asyncio.gather(
        *(stores[i % 4].save(f"k{i}", TokenSet(f"a{i}", None, 1.0)) for i in range(20))
    )
    data = json.loads(path.read_text())
    assert sorted(data) == sorted(f"k{i}" for i in range(20))
