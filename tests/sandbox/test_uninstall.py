"""Conformance: disabling an integration and the disconnect hook."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from amobridge.sandbox import Clock, Sandbox, SandboxConfig
from sandbox_support import connect

DISCONNECT_URL = "https://shop.example/amocrm/disconnect?key=k1"


@dataclass
class Hook:
    reply: int | Exception = 200
    received: list[httpx.Request] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.received.append(request)
        if isinstance(self.reply, Exception):
            raise self.reply
        return httpx.Response(self.reply)


@pytest.fixture
def hook() -> Hook:
    return Hook()


@pytest.fixture
def sandbox(sandbox_config: SandboxConfig, signing_key: rsa.RSAPrivateKey, hook: Hook) -> Sandbox:
    return Sandbox(
        sandbox_config,
        clock=Clock(),
        signing_key=signing_key,
        outbound_transport=httpx.MockTransport(hook.handle),
    )


@dataclass
class Installed:
    account: dict[str, Any]
    integration: dict[str, Any]
    tokens: dict[str, Any]
    api: httpx.AsyncClient

    async def refresh(self) -> httpx.Response:
        return await self.api.post(
            "/oauth2/access_token",
            json={
                "client_id": self.integration["client_id"],
                "client_secret": self.integration["client_secret"],
                "grant_type": "refresh_token",
                "refresh_token": self.tokens["refresh_token"],
                "redirect_uri": self.integration["redirect_uri"],
            },
        )


async def install(
    control: httpx.AsyncClient, sandbox_app: Any, disconnect_url: str | None = DISCONNECT_URL
) -> Installed:
    """acme.amocrm.ru with an integration that has a disconnect URL, connected."""
    account = (await control.post("/_sandbox/accounts", json={"subdomain": "acme"})).json()
    body: dict[str, Any] = {"name": "Shop", "redirect_uri": "https://shop.example/cb"}
    if disconnect_url is not None:
        body["disconnect_url"] = disconnect_url
    integration = (await control.post("/_sandbox/integrations", json=body)).json()
    code = (
        await control.post(
            "/_sandbox/authorize",
            json={"client_id": integration["client_id"], "account_id": account["id"]},
        )
    ).json()["code"]
    api = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=sandbox_app), base_url="https://acme.amocrm.ru"
    )
    tokens = await api.post(
        "/oauth2/access_token",
        json={
            "client_id": integration["client_id"],
            "client_secret": integration["client_secret"],
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": integration["redirect_uri"],
        },
    )
    assert tokens.status_code == 200
    return Installed(account, integration, tokens.json(), api)


@pytest.fixture
async def installed(control: httpx.AsyncClient, sandbox_app: Any) -> Any:
    made = await install(control, sandbox_app)
    yield made
    await made.api.aclose()


async def uninstall(control: httpx.AsyncClient, client_id: str, account_id: Any) -> httpx.Response:
    return await control.post(
        f"/_sandbox/integrations/{client_id}/uninstall", json={"account_id": account_id}
    )


async def test_uninstall_revokes_tokens(
    control: httpx.AsyncClient, installed: Installed, sandbox: Sandbox
) -> None:
    """Disabling the integration revokes its tokens: API calls → 401, refresh → 401
    "Token has been revoked"."""
    assert sandbox.tokens.authenticate(installed.tokens["access_token"]) is not None
    before = await installed.api.get(
        "/api/v4/account", headers={"Authorization": f"Bearer {installed.tokens['access_token']}"}
    )
    assert before.status_code == 200
    reply = await uninstall(control, installed.integration["client_id"], installed.account["id"])
    assert reply.status_code == 200, reply.text
    assert reply.json()["revoked"] == 1
    assert sandbox.tokens.authenticate(installed.tokens["access_token"]) is None
    api = await installed.api.get(
        "/api/v4/account", headers={"Authorization": f"Bearer {installed.tokens['access_token']}"}
    )
    assert api.status_code == 401
    refreshed = await installed.refresh()
    assert refreshed.status_code == 401
    assert refreshed.json()["hint"] == "Token has been revoked"
    integration = sandbox.state.integrations[installed.integration["client_id"]]
    assert integration.installs[installed.account["id"]] is False


async def test_disconnect_hook_gets_a_signed_get(
    control: httpx.AsyncClient, installed: Installed, hook: Hook
) -> None:
    """The disconnect URL gets one GET with account_id, client_uuid and signature = lowercase
    hex HMAC-SHA256 of "{client_uuid}|{account_id}" keyed with the client secret — checked here
    the way a receiver verifies it (client_uuid is the client_id; a constant-time compare)."""
    reply = await uninstall(control, installed.integration["client_id"], installed.account["id"])
    assert reply.json()["disconnect"] == {"status": 200}
    (request,) = hook.received
    assert request.method == "GET"
    assert request.content == b""
    url = urlsplit(str(request.url))
    assert f"{url.scheme}://{url.netloc}{url.path}" == DISCONNECT_URL.split("?")[0]
    params = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert params["key"] == "k1"  # the hook URL's own query survives
    assert set(params) == {"key", "account_id", "client_uuid", "signature"}

    CLIENT_ID = installed.integration["client_id"]
    CLIENT_SECRET = installed.integration["client_secret"]
    client_uuid, account_id, signature = (
        params["client_uuid"],
        params["account_id"],
        params["signature"],
    )
    msg = f"{client_uuid}|{int(account_id)}".encode()
    ok = client_uuid == CLIENT_ID and hmac.compare_digest(
        hmac.new(CLIENT_SECRET.encode(), msg, hashlib.sha256).hexdigest(), signature
    )
    assert ok
    assert signature == signature.lower()
    assert int(account_id) == installed.account["id"]


async def test_disconnect_reply_is_ignored_and_never_resent(
    control: httpx.AsyncClient, installed: Installed, hook: Hook, sandbox: Sandbox
) -> None:
    """Sent once, reply ignored: a 500 still disables the integration, nothing is retried."""
    hook.reply = 500
    reply = await uninstall(control, installed.integration["client_id"], installed.account["id"])
    assert reply.status_code == 200
    assert reply.json()["disconnect"] == {"status": 500}
    await control.post("/_sandbox/clock", json={"advance_seconds": 3600})
    assert len(hook.received) == 1
    assert sandbox.tokens.authenticate(installed.tokens["access_token"]) is None


async def test_unreachable_disconnect_hook_is_recorded(
    control: httpx.AsyncClient, installed: Installed, hook: Hook
) -> None:
    """A hook that times out changes nothing; the outbound log says what happened."""
    hook.reply = httpx.ReadTimeout("slow")
    reply = await uninstall(control, installed.integration["client_id"], installed.account["id"])
    assert reply.json()["disconnect"] == {"error": "timeout"}
    (entry,) = (await control.get("/_sandbox/outbound", params={"kind": "disconnect"})).json()
    assert entry["error"] == "timeout"
    assert entry["status"] is None
    assert entry["account_id"] == installed.account["id"]
    assert entry["client_id"] == installed.integration["client_id"]
    assert "signature=" in entry["url"]
    assert installed.integration["client_secret"] not in str(entry)


async def test_no_disconnect_url_sends_nothing(
    control: httpx.AsyncClient, sandbox_app: Any, hook: Hook
) -> None:
    """The hook is optional: without one, uninstall just revokes."""
    made = await install(control, sandbox_app, disconnect_url=None)
    try:
        reply = await uninstall(control, made.integration["client_id"], made.account["id"])
    finally:
        await made.api.aclose()
    assert reply.json() == {"revoked": 1, "disconnect": None}
    assert hook.received == []


async def test_reinstall_after_uninstall_issues_working_tokens(
    control: httpx.AsyncClient, installed: Installed, sandbox: Sandbox, sandbox_app: Any
) -> None:
    """After a re-install the new grant works; the old tokens stay dead."""
    client_id = installed.integration["client_id"]
    await uninstall(control, client_id, installed.account["id"])
    code = (
        await control.post(
            "/_sandbox/authorize",
            json={"client_id": client_id, "account_id": installed.account["id"]},
        )
    ).json()["code"]
    fresh = await installed.api.post(
        "/oauth2/access_token",
        json={
            "client_id": client_id,
            "client_secret": installed.integration["client_secret"],
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": installed.integration["redirect_uri"],
        },
    )
    assert fresh.status_code == 200
    assert sandbox.tokens.authenticate(fresh.json()["access_token"]) is not None
    assert sandbox.tokens.authenticate(installed.tokens["access_token"]) is None
    assert (await installed.refresh()).status_code == 401


async def test_uninstall_touches_only_that_account(
    control: httpx.AsyncClient, sandbox_app: Any, sandbox: Sandbox
) -> None:
    """Disabling in one account leaves the integration's other installs alone."""
    acme = await connect(control, sandbox_app, "acme")
    beta = await connect(control, sandbox_app, "beta")
    try:
        reply = await uninstall(control, acme.integration["client_id"], acme.account_id)
        assert reply.status_code == 200
        assert sandbox.tokens.authenticate(acme.tokens["access_token"]) is None
        assert sandbox.tokens.authenticate(beta.tokens["access_token"]) is not None
    finally:
        await acme.api.aclose()
        await beta.api.aclose()


@pytest.mark.parametrize(
    ("client_id", "account", "status"),
    [("nope", "ACC", 404), ("CID", 999, 404), ("CID", "x", 422), ("CID", None, 422)],
)
async def test_uninstall_errors(
    control: httpx.AsyncClient,
    installed: Installed,
    client_id: str,
    account: Any,
    status: int,
) -> None:
    """Control API: unknown integration or account → 404; bad input → 422."""
    cid = installed.integration["client_id"] if client_id == "CID" else client_id
    account_id = installed.account["id"] if account == "ACC" else account
    reply = await uninstall(control, cid, account_id)
    assert reply.status_code == status, reply.text
    assert "detail" in reply.json()


async def test_uninstalling_twice_is_a_conflict(
    control: httpx.AsyncClient, installed: Installed, hook: Hook
) -> None:
    """An integration not installed in the account cannot be disabled again (no second hook)."""
    client_id, account_id = installed.integration["client_id"], installed.account["id"]
    assert (await uninstall(control, client_id, account_id)).status_code == 200
    assert (await uninstall(control, client_id, account_id)).status_code == 409
    assert len(hook.received) == 1
