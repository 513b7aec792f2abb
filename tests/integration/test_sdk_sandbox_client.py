"""AmoClient end to end against the sandbox: code exchange, domains, discovery, long-lived tokens,
and a real socket through ``base_url``.

The account host only, subdomain discovery, the token endpoint on the account host, long-lived
tokens, and a token used on the wrong domain.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn

from amobridge.amo import (
    AmoAccountNotFound,
    AmoAuthError,
    AmoClient,
    AmoInvalidDomain,
    AmoReauthRequired,
    InMemoryTokenStore,
    OAuthTokenProvider,
    StaticTokenProvider,
    TokenSet,
    exchange_code,
)
from amobridge.amo.errors import ACCOUNT_NOT_FOUND_MESSAGE
from sandbox_support import Connected


async def test_exchange_a_code_and_call_the_api(
    acme: Connected, sandbox_app: Any, control: httpx.AsyncClient
) -> None:
    consent = (
        await control.post(
            "/_sandbox/authorize",
            json={"client_id": acme.integration["client_id"], "account_id": acme.account_id},
        )
    ).json()
    store = InMemoryTokenStore()
    async with AmoClient.oauth(
        consent["referer"],
        client_id=acme.integration["client_id"],
        client_secret=acme.integration["client_secret"],
        redirect_uri=acme.integration["redirect_uri"],
        store=store,
        transport=httpx.ASGITransport(app=sandbox_app),
    ) as amo:
        tokens = amo.token_provider
        assert isinstance(tokens, OAuthTokenProvider)
        await tokens.exchange_code(consent["code"])
        account = await amo.account.get()
    assert account.id == acme.account_id
    stored = await store.load(f"{acme.integration['client_id']}@{acme.host}")
    assert stored is not None
    assert stored.refresh_token


async def test_a_code_works_once(
    acme: Connected, sandbox_app: Any, control: httpx.AsyncClient
) -> None:
    consent = (
        await control.post(
            "/_sandbox/authorize",
            json={"client_id": acme.integration["client_id"], "account_id": acme.account_id},
        )
    ).json()
    kwargs: dict[str, Any] = {
        "client_id": acme.integration["client_id"],
        "client_secret": acme.integration["client_secret"],
        "redirect_uri": acme.integration["redirect_uri"],
        "code": consent["code"],
        "transport": httpx.ASGITransport(app=sandbox_app),
    }
    await exchange_code(consent["referer"], **kwargs)
    with pytest.raises(AmoAuthError, match="only once") as caught:
        await exchange_code(consent["referer"], **kwargs)
    assert caught.value.hint == "Authorization code has been revoked"


@pytest.mark.parametrize("domain", ["www.amocrm.ru", "api-b.amocrm.ru", "https://www.kommo.com/"])
def test_amocrm_own_hosts_are_refused_before_any_call(domain: str) -> None:
    with pytest.raises(AmoInvalidDomain, match=ACCOUNT_NOT_FOUND_MESSAGE):
        AmoClient(domain, token_provider=StaticTokenProvider("t" * 20))


@pytest.mark.parametrize("domain", ["nosuch.amocrm.ru", "acme.kommo.com"])
async def test_wrong_account_domain_says_account_not_found(
    acme: Connected, sandbox_app: Any, domain: str
) -> None:
    async with AmoClient(
        domain,
        token_provider=StaticTokenProvider(acme.tokens["access_token"]),
        transport=httpx.ASGITransport(app=sandbox_app),
    ) as amo:
        with pytest.raises(AmoAccountNotFound) as caught:
            await amo.account.get()
    assert str(caught.value).startswith(ACCOUNT_NOT_FOUND_MESSAGE)


async def test_refresh_on_a_wrong_host_discovers_the_subdomain(
    acme: Connected, sandbox_app: Any, control: httpx.AsyncClient
) -> None:
    """``Invalid account`` from the token endpoint → one discovery → retry there."""
    stale = TokenSet(  # expired: the provider refreshes before the first call
        acme.tokens["access_token"],
        acme.tokens["refresh_token"],
        expires_at=time.time() - 1,
        domain="renamed.amocrm.ru",
    )
    store = InMemoryTokenStore({"k": stale})
    transport = httpx.ASGITransport(app=sandbox_app)
    await control.delete("/_sandbox/requests")
    async with (
        OAuthTokenProvider(
            client_id=acme.integration["client_id"],
            client_secret=acme.integration["client_secret"],
            redirect_uri=acme.integration["redirect_uri"],
            store=store,
            key="k",
            domain="renamed.amocrm.ru",
            transport=transport,
        ) as tokens,
        AmoClient("renamed.amocrm.ru", token_provider=tokens, transport=transport) as amo,
    ):
        account = await amo.account.get()
        assert amo.domain.host == acme.host
    assert account.id == acme.account_id
    saved = await store.load("k")
    assert saved is not None
    assert saved.domain == acme.host
    log = (await control.get("/_sandbox/requests", params={"path_prefix": "/oauth2"})).json()
    assert [(r["path"], r["status"]) for r in log] == [
        ("/oauth2/access_token", 400),
        ("/oauth2/account/current/subdomain", 200),
        ("/oauth2/access_token", 200),
    ]


async def test_long_lived_token_works_until_revoked(
    acme: Connected, sandbox_app: Any, control: httpx.AsyncClient
) -> None:
    token = (
        await control.post(
            "/_sandbox/long-lived-tokens",
            json={"client_id": acme.integration["client_id"], "account_id": acme.account_id},
        )
    ).json()["access_token"]
    async with AmoClient(
        acme.host,
        token_provider=StaticTokenProvider(token),
        transport=httpx.ASGITransport(app=sandbox_app),
    ) as amo:
        assert amo.rate_limit_key == f"{acme.integration['client_id']}@{acme.host}"
        assert (await amo.account.get()).id == acme.account_id
        await control.post(
            f"/_sandbox/integrations/{acme.integration['client_id']}/uninstall",
            json={"account_id": acme.account_id},
        )
        with pytest.raises(AmoReauthRequired, match="Keys tab"):
            await amo.account.get()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def served_sandbox(sandbox_app: Any) -> AsyncIterator[str]:
    """The sandbox on a real socket (as ``amobridge sandbox`` serves it on 127.0.0.1:8010)."""
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            sandbox_app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"
        )
    )
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:  # uvicorn offers a flag, not an event: poll it
            assert not task.done(), "uvicorn failed to start"
            await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


async def test_base_url_reaches_a_served_sandbox_with_the_account_host(
    acme: Connected, served_sandbox: str
) -> None:
    async with AmoClient(
        acme.host,
        token_provider=StaticTokenProvider(acme.tokens["access_token"]),
        base_url=served_sandbox,
    ) as amo:
        account = await amo.account.get()
        created = await amo.request_json(
            "POST", "leads", json=[{"name": "over TCP"}], retry="create"
        )
    assert account.id == acme.account_id
    assert created["_embedded"]["leads"][0]["request_id"] == "0"
