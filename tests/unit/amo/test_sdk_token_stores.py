"""Token stores: the in-memory and JSON-file implementations of the TokenStore protocol."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import pytest

from amobridge.amo.auth import InMemoryTokenStore, JsonFileTokenStore, TokenSet, TokenStore
from amobridge.amo.errors import AmoTokenStoreError

PAIR = TokenSet("access-1", "refresh-1", 1_700_000_000.0, domain="acme.amocrm.ru")


@pytest.fixture(params=["memory", "json"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> TokenStore:
    if request.param == "memory":
        return InMemoryTokenStore()
    return JsonFileTokenStore(tmp_path / "tokens.json")


async def test_store_round_trip(store: TokenStore) -> None:
    assert isinstance(store, TokenStore)
    assert await store.load("k") is None
    await store.save("k", PAIR)
    await store.save("other", TokenSet("access-2", None, 1.0))
    assert await store.load("k") == PAIR
    assert (await store.load("other")) == TokenSet("access-2", None, 1.0)


async def test_store_lock_is_exclusive_per_key(store: TokenStore) -> None:
    order: list[str] = []

    async def hold(name: str, inside: asyncio.Event, release: asyncio.Event) -> None:
        async with store.lock("k"):
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
    await asyncio.gather(first, second)
    assert order == ["a in", "a out", "b in", "b out"]


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


async def test_json_store_lock_excludes_another_process(tmp_path: Path) -> None:
    """Two store objects on one file stand for two processes: flock excludes them (the timeout
    test below shows the waiter cannot get in while the lock is held)."""
    path = tmp_path / "tokens.json"
    ours, theirs = JsonFileTokenStore(path), JsonFileTokenStore(path, lock_timeout=5)
    entered = asyncio.Event()
    async with ours.lock("k"):

        async def take() -> None:
            async with theirs.lock("k"):
                entered.set()

        task = asyncio.create_task(take())
        await asyncio.sleep(0)
        assert not entered.is_set()  # it is polling the held flock
    await asyncio.wait_for(task, 5)
    assert entered.is_set()


async def test_json_store_lock_gives_up_after_its_timeout(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    ours, theirs = JsonFileTokenStore(path), JsonFileTokenStore(path, lock_timeout=0.05)
    async with ours.lock("k"):
        with pytest.raises(AmoTokenStoreError, match="another process"):
            async with theirs.lock("k"):
                pass


async def test_json_store_keys_lock_independently(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    ours, theirs = JsonFileTokenStore(path), JsonFileTokenStore(path, lock_timeout=0.05)
    async with ours.lock("a"), theirs.lock("b"):
        await ours.save("a", PAIR)
        await theirs.save("b", PAIR)
    assert await ours.load("b") == PAIR


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
