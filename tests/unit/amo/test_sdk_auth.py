"""Token providers against a scripted token endpoint (httpx.MockTransport).

Refresh tokens are single-use, so concurrent refreshes must be one; any
400/401 on refresh means the grant is dead; ``Invalid account`` means the wrong host.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import httpx
import pytest

from amobridge.amo.auth import (
    InMemoryTokenStore,
    OAuthTokenProvider,
    StaticTokenProvider,
    TokenSet,
    exchange_code,
)
from amobridge.amo.client import AmoClient
from amobridge.amo.errors import (
    AmoAuthError,
    AmoReauthRequired,
    AmoServerError,
    AmoTokenStoreError,
)
from amobridge.amo.retry import RetryPolicy

KEY = "client-1@acme.amocrm.ru"
SECRET = "client-secret-value-123456"


async def no_sleep(seconds: float) -> None:
    return None


class TokenEndpoint:
    """A token endpoint with single-use refresh tokens, on one account host."""

    def __init__(self, host: str = "acme.amocrm.ru", *, ttl: int = 86400) -> None:
        self.host = host
        self.ttl = ttl
        self.live_refresh: set[str] = {"refresh-0"}
        self.calls: list[dict[str, Any]] = []
        self.hosts: list[str] = []
        self.gate: asyncio.Event | None = None
        self.script: list[httpx.Response] = []  # answered first, in order
        self.counter = itertools.count(1)
        self.discovery: dict[str, Any] | None = None
        self.api_requests: list[httpx.Request] = []
        self.called = asyncio.Event()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth2/account/current/subdomain":
            self.hosts.append(request.headers["host"])
            if self.discovery is None:
                return httpx.Response(401, json={"detail": "unknown"})
            return httpx.Response(200, json=self.discovery)
        if request.url.path.startswith("/api/v4/"):
            self.api_requests.append(request)
            return httpx.Response(200, json={"host": request.headers["host"]})
        assert request.url.path == "/oauth2/access_token"
        body = json.loads(request.content)
        self.calls.append(body)
        self.called.set()
        self.hosts.append(request.headers["host"])
        if self.gate is not None:
            await self.gate.wait()
        if self.script:
            return self.script.pop(0)
        if request.headers["host"] != self.host:
            return httpx.Response(400, json={"hint": "Invalid account", "status": 400})
        if body["grant_type"] == "authorization_code":
            if body["code"] != "good-code":
                return httpx.Response(
                    400, json={"hint": "Authorization code has expired", "status": 400}
                )
        else:
            token = body["refresh_token"]
            if token not in self.live_refresh:
                return httpx.Response(
                    401, json={"hint": "Token has been revoked", "title": "Некорректный запрос"}
                )
            self.live_refresh.discard(token)
        n = next(self.counter)
        self.live_refresh.add(f"refresh-{n}")
        return httpx.Response(
            200,
            json={
                "token_type": "Bearer",
                "expires_in": self.ttl,
                "access_token": f"access-{n}",
                "refresh_token": f"refresh-{n}",
            },
        )


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def stored(
    access: str = "access-0", refresh: str | None = "refresh-0", *, expires_at: float
) -> TokenSet:
    return TokenSet(access_token=access, refresh_token=refresh, expires_at=expires_at)


def provider(
    endpoint: TokenEndpoint,
    store: Any,
    clock: Clock,
    **kw: Any,
) -> OAuthTokenProvider:
    return OAuthTokenProvider(
        client_id="client-1",
        client_secret=SECRET,
        redirect_uri="https://app.example/callback",
        store=store,
        key=KEY,
        domain="acme.amocrm.ru",
        transport=httpx.MockTransport(endpoint),
        clock=clock,
        retry=RetryPolicy(sleep=no_sleep, max_attempts=3),
        **kw,
    )


async def test_concurrent_refreshes_of_one_stale_token_make_one_call() -> None:
    endpoint = TokenEndpoint()
    endpoint.gate = asyncio.Event()
    clock = Clock()
    store = InMemoryTokenStore({KEY: stored(expires_at=clock.now + 3600)})
    async with provider(endpoint, store, clock) as tokens:
        callers = [asyncio.create_task(tokens.refresh("access-0")) for _ in range(50)]
        await asyncio.sleep(0)
        endpoint.gate.set()
        results = await asyncio.gather(*callers)
    assert set(results) == {"access-1"}
    assert len(endpoint.calls) == 1
    assert endpoint.calls[0]["grant_type"] == "refresh_token"
    assert (await store.load(KEY)) == TokenSet(
        "access-1", "refresh-1", clock.now + 86400, issued_at=clock.now, domain="acme.amocrm.ru"
    )


async def test_get_token_waits_for_a_refresh_in_flight() -> None:
    """The token in hand was refused: a caller asking meanwhile gets the new one, not the old."""
    endpoint = TokenEndpoint()
    endpoint.gate = asyncio.Event()
    clock = Clock()
    store = InMemoryTokenStore({KEY: stored(expires_at=clock.now + 3600)})
    async with provider(endpoint, store, clock) as tokens:
        assert await tokens.get_token() == "access-0"
        refreshing = asyncio.create_task(tokens.refresh("access-0"))
        await endpoint.called.wait()
        asking = asyncio.create_task(tokens.get_token())
        for _ in range(3):
            await asyncio.sleep(0)
        assert not asking.done()  # it waits for the refresh instead of returning access-0
        endpoint.gate.set()
        assert await asking == "access-1"
        assert await refreshing == "access-1"
    assert len(endpoint.calls) == 1


async def test_a_refusal_of_an_older_token_returns_the_current_one_without_a_call() -> None:
    endpoint = TokenEndpoint()
    clock = Clock()
    store = InMemoryTokenStore({KEY: stored(expires_at=clock.now + 3600)})
    async with provider(endpoint, store, clock) as tokens:
        assert await tokens.refresh("access-0") == "access-1"
        # a request sent with access-0 before the refresh comes back 401 afterwards
        assert await tokens.refresh("access-0") == "access-1"
    assert len(endpoint.calls) == 1


async def test_a_pair_refreshed_elsewhere_is_reused_without_calling_amocrm() -> None:
    """Another process (another provider on the same store) refreshed first."""
    endpoint = TokenEndpoint()
    clock = Clock()
    store = InMemoryTokenStore({KEY: stored(expires_at=clock.now + 3600)})
    async with provider(endpoint, store, clock) as ours, provider(endpoint, store, clock) as theirs:
        assert await ours.get_token() == "access-0"
        assert await theirs.refresh("access-0") == "access-1"
        # ours still caches access-0; amoCRM refused it, so it asks for a refresh
        assert await ours.refresh("access-0") == "access-1"
    assert len(endpoint.calls) == 1


async def test_refresh_before_expiry_with_leeway() -> None:
    endpoint = TokenEndpoint()
    clock = Clock()
    store = InMemoryTokenStore({KEY: stored(expires_at=clock.now + 600)})
    async with provider(endpoint, store, clock, leeway=300) as tokens:
        assert await tokens.get_token() == "access-0"
        clock.now += 301  # 299 s left: inside the leeway
        assert await tokens.get_token() == "access-1"
        assert await tokens.get_token() == "access-1"
    assert len(endpoint.calls) == 1


async def test_leeway_is_capped_at_half_a_short_lifetime() -> None:
    """With 60 s tokens a 5 min leeway would refresh on every call."""
    endpoint = TokenEndpoint(ttl=60)
    clock = Clock()
    store = InMemoryTokenStore({KEY: stored(expires_at=clock.now - 1)})
    async with provider(endpoint, store, clock, leeway=300) as tokens:
        assert await tokens.get_token() == "access-1"
        clock.now += 20
        assert await tokens.get_token() == "access-1"
        clock.now += 15  # 25 s left of 60: below half
        assert await tokens.get_token() == "access-2"
    assert len(endpoint.calls) == 2


class FlakyStore(InMemoryTokenStore):
    def __init__(self, *args: Any, fail: int) -> None:
        super().__init__(*args)
        self.fail = fail
        self.saves: list[TokenSet] = []

    async def save(self, key: str, tokens: TokenSet) -> None:
        if self.fail > 0:
            self.fail -= 1
            raise OSError("disk full")
        self.saves.append(tokens)
        await super().save(key, tokens)


async def test_failed_save_raises_and_keeps_the_pair_pending() -> None:
    endpoint = TokenEndpoint()
    clock = Clock()
    store = FlakyStore({KEY: stored(expires_at=clock.now - 1)}, fail=2)
    async with provider(endpoint, store, clock) as tokens:
        with pytest.raises(AmoTokenStoreError, match="kept in memory") as caught:
            await tokens.get_token()
        assert isinstance(caught.value.__cause__, OSError)
        assert tokens.has_pending_save
        # the unsaved pair is never handed out; the save is retried first
        with pytest.raises(AmoTokenStoreError):
            await tokens.get_token()
        assert await tokens.get_token() == "access-1"
        assert not tokens.has_pending_save
    assert len(endpoint.calls) == 1  # the spent refresh token was never sent again
    assert [t.access_token for t in store.saves] == ["access-1"]
    assert (await store.load(KEY)).refresh_token == "refresh-1"  # type: ignore[union-attr]


async def test_new_pair_is_saved_before_it_is_used() -> None:
    endpoint = TokenEndpoint()
    clock = Clock()
    store = FlakyStore({KEY: stored(expires_at=clock.now + 3600)}, fail=0)
    seen_at_use: list[list[str]] = []

    async def api(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/api/"):
            seen_at_use.append([t.access_token for t in store.saves])
            if request.headers["authorization"] == "Bearer access-0":
                return httpx.Response(401, json={"detail": "Invalid user name or password"})
            return httpx.Response(200, json={})
        return await endpoint(request)

    transport = httpx.MockTransport(api)
    tokens = OAuthTokenProvider(
        client_id="client-1",
        client_secret=SECRET,
        redirect_uri="https://app.example/callback",
        store=store,
        key=KEY,
        domain="acme",
        transport=transport,
        clock=clock,
    )
    async with tokens, AmoClient("acme", token_provider=tokens, transport=transport) as amo:
        await amo.request_json("GET", "leads")
    assert seen_at_use == [[], ["access-1"]]


async def test_revoked_grant_raises_reauth_once_then_without_network() -> None:
    endpoint = TokenEndpoint()
    endpoint.live_refresh.clear()  # refresh-0 was spent elsewhere
    clock = Clock()
    store = InMemoryTokenStore({KEY: stored(expires_at=clock.now - 1)})
    async with provider(endpoint, store, clock) as tokens:
        callers = [tokens.get_token() for _ in range(20)]
        results = await asyncio.gather(*callers, return_exceptions=True)
        assert all(isinstance(r, AmoReauthRequired) for r in results)
        with pytest.raises(AmoReauthRequired) as caught:
            await tokens.refresh("access-0")
        assert len(endpoint.calls) == 1
        assert caught.value.hint == "Token has been revoked"
        assert "connect the integration again" in str(caught.value)
        # new tokens stored (the user connected again): calls work again
        await store.save(KEY, stored("access-9", "refresh-9", expires_at=clock.now + 3600))
        assert await tokens.get_token() == "access-9"


@pytest.mark.parametrize(
    "refusal",
    [
        httpx.Response(400, json={"error": "invalid_grant", "hint": "Refresh token expired"}),
        httpx.Response(400, json={"hint": "Token has expired", "status": 400}),
        httpx.Response(
            401, json={"title": "Некорректный клиент", "detail": "Авторизация клиента не прошла"}
        ),
        httpx.Response(403, text="<html>forbidden</html>"),
    ],
)
async def test_any_4xx_on_refresh_means_reauth(refusal: httpx.Response) -> None:
    endpoint = TokenEndpoint()
    endpoint.script = [refusal]
    clock = Clock()
    store = InMemoryTokenStore({KEY: stored(expires_at=clock.now - 1)})
    async with provider(endpoint, store, clock) as tokens:
        with pytest.raises(AmoReauthRequired) as caught:
            await tokens.get_token()
    assert len(endpoint.calls) == 1
    assert SECRET not in str(caught.value)
    assert "refresh-0" not in str(caught.value)
    if refusal.status_code == 400 and b"invalid_grant" in refusal.content:
        assert caught.value.oauth_error == "invalid_grant"
        assert "invalid_grant" in str(caught.value)


async def test_5xx_and_timeouts_on_refresh_are_retried() -> None:
    endpoint = TokenEndpoint()
    endpoint.script = [httpx.Response(502, text="<html>bad gateway</html>")]
    clock = Clock()
    store = InMemoryTokenStore({KEY: stored(expires_at=clock.now - 1)})
    async with provider(endpoint, store, clock) as tokens:
        assert await tokens.get_token() == "access-1"
    assert len(endpoint.calls) == 2


async def test_token_endpoint_down_is_a_server_error_not_reauth() -> None:
    endpoint = TokenEndpoint()
    endpoint.script = [httpx.Response(500, json={"title": "ErrInternalServer"})] * 3
    clock = Clock()
    store = InMemoryTokenStore({KEY: stored(expires_at=clock.now - 1)})
    async with provider(endpoint, store, clock) as tokens:
        with pytest.raises(AmoServerError):
            await tokens.get_token()
        endpoint.script = []
        assert await tokens.get_token() == "access-1"  # not marked dead


async def test_invalid_account_discovers_the_subdomain_and_retries_once() -> None:
    endpoint = TokenEndpoint(host="renamed.amocrm.ru")
    endpoint.discovery = {
        "id": 1,
        "subdomain": "renamed",
        "domain": "renamed.amocrm.ru",
        "top_level_domain": "ru",
    }
    clock = Clock()
    store = InMemoryTokenStore({KEY: stored(expires_at=clock.now - 1)})
    async with provider(endpoint, store, clock) as tokens:
        assert await tokens.get_token() == "access-1"
        assert tokens.domain.host == "renamed.amocrm.ru"
    assert endpoint.hosts == ["acme.amocrm.ru", "api-b.amocrm.ru", "renamed.amocrm.ru"]
    assert (await store.load(KEY)).domain == "renamed.amocrm.ru"  # type: ignore[union-attr]


async def test_client_follows_the_discovered_domain() -> None:
    endpoint = TokenEndpoint(host="renamed.amocrm.ru")
    endpoint.discovery = {"id": 1, "subdomain": "renamed", "domain": "renamed.amocrm.ru"}
    clock = Clock()
    store = InMemoryTokenStore({KEY: stored(expires_at=clock.now - 1)})
    transport = httpx.MockTransport(endpoint)
    async with (
        provider(endpoint, store, clock) as tokens,
        AmoClient("acme", token_provider=tokens, transport=transport) as amo,
    ):
        assert await amo.request_json("GET", "account") == {"host": "renamed.amocrm.ru"}
        assert amo.domain.host == "renamed.amocrm.ru"


async def test_failed_discovery_means_reauth() -> None:
    endpoint = TokenEndpoint(host="renamed.amocrm.ru")
    clock = Clock()
    store = InMemoryTokenStore({KEY: stored(expires_at=clock.now - 1)})
    async with provider(endpoint, store, clock) as tokens:
        with pytest.raises(AmoReauthRequired, match="Invalid account"):
            await tokens.get_token()
    assert len(endpoint.calls) == 1


async def test_no_stored_tokens_asks_to_connect() -> None:
    async with provider(TokenEndpoint(), InMemoryTokenStore(), Clock()) as tokens:
        with pytest.raises(AmoReauthRequired, match="connect the integration"):
            await tokens.get_token()


async def test_pair_without_refresh_token_cannot_refresh() -> None:
    endpoint = TokenEndpoint()
    clock = Clock()
    store = InMemoryTokenStore({KEY: stored(refresh=None, expires_at=clock.now - 1)})
    async with provider(endpoint, store, clock) as tokens:
        with pytest.raises(AmoReauthRequired, match="no refresh token"):
            await tokens.get_token()
    assert endpoint.calls == []


async def test_cancelled_caller_does_not_lose_the_refreshed_pair() -> None:
    endpoint = TokenEndpoint()
    endpoint.gate = asyncio.Event()
    clock = Clock()
    store = InMemoryTokenStore({KEY: stored(expires_at=clock.now - 1)})
    async with provider(endpoint, store, clock) as tokens:
        caller = asyncio.create_task(tokens.get_token())
        await endpoint.called.wait()
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        endpoint.gate.set()
        assert await tokens.get_token() == "access-1"
    assert (await store.load(KEY)).access_token == "access-1"  # type: ignore[union-attr]
    assert len(endpoint.calls) == 1


async def test_exchange_code_returns_the_pair() -> None:
    endpoint = TokenEndpoint()
    clock = Clock()
    pair = await exchange_code(
        "https://acme.amocrm.ru/",
        client_id="client-1",
        client_secret=SECRET,
        redirect_uri="https://app.example/callback",
        code="good-code",
        transport=httpx.MockTransport(endpoint),
        clock=clock,
    )
    assert pair.access_token == "access-1"
    assert pair.refresh_token == "refresh-1"
    assert pair.expires_at == clock.now + 86400
    assert pair.domain == "acme.amocrm.ru"
    assert endpoint.calls[0]["grant_type"] == "authorization_code"
    assert endpoint.hosts == ["acme.amocrm.ru"]


async def test_exchange_code_refusal_says_what_to_do() -> None:
    with pytest.raises(AmoAuthError, match="20 minutes") as caught:
        await exchange_code(
            "acme",
            client_id="client-1",
            client_secret=SECRET,
            redirect_uri="https://app.example/callback",
            code="def50200" + "ab" * 40,
            transport=httpx.MockTransport(TokenEndpoint()),
        )
    assert caught.value.hint == "Authorization code has expired"
    assert "def50200abab" not in str(caught.value)


async def test_provider_exchange_code_stores_the_pair() -> None:
    endpoint = TokenEndpoint()
    store = InMemoryTokenStore()
    async with provider(endpoint, store, Clock()) as tokens:
        await tokens.exchange_code("good-code")
        assert await tokens.get_token() == "access-1"
    assert (await store.load(KEY)).refresh_token == "refresh-1"  # type: ignore[union-attr]


async def test_server_time_and_missing_refresh_token_in_reply() -> None:
    pair = TokenSet.from_token_response(
        {"access_token": "a", "expires_in": 10, "server_time": 123},
        now=100.0,
        previous_refresh_token="old",
    )
    assert (pair.expires_at, pair.refresh_token, pair.server_time) == (110.0, "old", 123)
    with pytest.raises(ValueError, match="access_token"):
        TokenSet.from_token_response({"expires_in": 10}, now=0)


def test_token_set_round_trips_and_masks_its_repr() -> None:
    pair = TokenSet(
        "eyJhbGciOiJSUzI1NiJ9.e30.sig", "def50200" + "a" * 64, 5.0, domain="acme.amocrm.ru"
    )
    assert TokenSet.from_dict(pair.to_dict()) == pair
    shown = repr(pair)
    assert "def50200aaaa" not in shown
    assert ".e30.sig" not in shown
    assert "acme.amocrm.ru" in shown


async def test_static_provider_cannot_refresh() -> None:
    tokens = StaticTokenProvider("long-lived-token-value-1234567890")
    assert await tokens.get_token() == "long-lived-token-value-1234567890"
    with pytest.raises(AmoReauthRequired, match="Keys tab"):
        await tokens.refresh("long-lived-token-value-1234567890")
    assert "1234567890" not in repr(tokens)


async def test_provider_repr_has_no_secret() -> None:
    async with provider(TokenEndpoint(), InMemoryTokenStore(), Clock()) as tokens:
        assert SECRET not in repr(tokens)
