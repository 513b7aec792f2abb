"""SyncAmoClient: the async client on a private loop thread, wrapped generically."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from amobridge.amo.auth import StaticTokenProvider
from amobridge.amo.blocking import SyncAmoClient, SyncIterator, _LoopThread, _wrap
from amobridge.amo.errors import AmoNotFound

TOKEN = "long-lived-token-value-0123456789"


def leads_api(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/api/v4/leads/1":
        return httpx.Response(
            200,
            json={"id": 1, "name": "Лид", "price": 10, "thread": threading.current_thread().name},
        )
    if request.url.path == "/api/v4/leads":
        page = int(request.url.params.get("page", "1"))
        if page > 2:
            return httpx.Response(204)
        links = {"self": {"href": f"https://acme.amocrm.ru/api/v4/leads?page={page}"}}
        if page < 2:
            links["next"] = {"href": f"https://acme.amocrm.ru/api/v4/leads?page={page + 1}"}
        return httpx.Response(
            200,
            json={
                "_page": page,
                "_links": links,
                "_embedded": {"leads": [{"id": page * 10 + i, "name": f"L{i}"} for i in range(2)]},
            },
        )
    return httpx.Response(404, json={"detail": f"Cannot GET {request.url.path}"})


@pytest.fixture
def amo() -> Any:
    with SyncAmoClient(
        "acme", token_provider=StaticTokenProvider(TOKEN), transport=httpx.MockTransport(leads_api)
    ) as client:
        yield client


def test_request_json_blocks_and_runs_on_the_loop_thread(amo: SyncAmoClient) -> None:
    reply = amo.request_json("GET", "leads/1")
    assert reply["id"] == 1
    assert reply["thread"] == "amobridge-blocking-loop"


def test_errors_propagate(amo: SyncAmoClient) -> None:
    with pytest.raises(AmoNotFound):
        amo.request_json("GET", "nope")


def test_resources_are_wrapped_generically(amo: SyncAmoClient) -> None:
    lead = amo.leads.get(1)
    assert lead.id == 1
    assert lead.name == "Лид"
    assert amo.domain.host == "acme.amocrm.ru"


def test_async_iterators_become_iterators(amo: SyncAmoClient) -> None:
    iterator = amo.leads.iterate()
    assert isinstance(iterator, SyncIterator)
    assert [lead.id for lead in iterator] == [10, 11, 20, 21]


def test_leaving_an_iterator_early_and_closing(amo: SyncAmoClient) -> None:
    with amo.leads.iterate() as iterator:
        first = next(iterator)
    assert first.id == 10
    with pytest.raises(StopIteration):
        next(iterator)


def test_close_is_idempotent_and_final() -> None:
    client = SyncAmoClient(
        "acme", token_provider=StaticTokenProvider(TOKEN), transport=httpx.MockTransport(leads_api)
    )
    client.close()
    client.close()
    with pytest.raises(RuntimeError, match="closed"):
        client.request_json("GET", "leads/1")


def test_constructor_errors_stop_the_thread() -> None:
    before = threading.active_count()
    with pytest.raises(Exception, match="account not found"):
        SyncAmoClient("www.amocrm.ru", token_provider=StaticTokenProvider(TOKEN))
    assert threading.active_count() == before


class Thing:
    """An object with async methods, an async generator and plain values."""

    label = "thing"

    async def double(self, x: int) -> int:
        return 2 * x

    async def items(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    async def child(self) -> Thing:
        return Thing()

    def plain(self) -> list[int]:
        return [1, 2]


def test_wrap_handles_coroutines_generators_nested_objects_and_values() -> None:
    runner = _LoopThread()
    try:
        thing = _wrap(Thing(), runner)
        assert thing.double(4) == 8
        assert list(thing.items(3)) == [0, 1, 2]
        assert thing.child().double(1) == 2
        assert thing.plain() == [1, 2]
        assert thing.label == "thing"
        assert _wrap(Thing, runner) is Thing  # classes are not wrapped
    finally:
        runner.close()
