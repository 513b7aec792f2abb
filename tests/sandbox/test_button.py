"""Conformance: the website button and auto-created integrations
(https://www.amocrm.ru/developers/content/oauth/button).

The integrator's ``secrets_uri`` is an ``httpx.MockTransport`` that records what arrives, when, and
what the sandbox had done by then.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from amobridge.sandbox import Clock, Sandbox, SandboxConfig

REDIRECT_URI = "https://shop.example/amocrm/callback"
SECRETS_URI = "https://shop.example/amocrm/secrets"


@dataclass
class Integrator:
    """The integrator's server as the sandbox reaches it (secrets POSTs, disconnect GETs)."""

    sandbox: Sandbox | None = None
    reply: int | Exception = 200
    received: list[dict[str, Any]] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        assert self.sandbox is not None
        body = request.content
        self.received.append(
            {
                "at": time.monotonic(),
                "method": request.method,
                "url": str(request.url),
                "content_type": request.headers.get("content-type"),
                "json": httpx.Response(200, content=body).json() if body else None,
                # What the sandbox had done when the POST arrived:
                "codes_issued": len(self.sandbox.state.codes),
                "integrations": set(self.sandbox.state.integrations),
            }
        )
        if isinstance(self.reply, Exception):
            raise self.reply
        return httpx.Response(self.reply, text="ok")


@pytest.fixture
def integrator() -> Integrator:
    return Integrator()


@pytest.fixture
def sandbox(
    sandbox_config: SandboxConfig, signing_key: rsa.RSAPrivateKey, integrator: Integrator
) -> Sandbox:
    box = Sandbox(
        sandbox_config,
        clock=Clock(),
        signing_key=signing_key,
        outbound_transport=httpx.MockTransport(integrator.handle),
    )
    integrator.sandbox = box
    return box


@pytest.fixture
async def account(control: httpx.AsyncClient) -> dict[str, Any]:
    return dict((await control.post("/_sandbox/accounts", json={"subdomain": "acme"})).json())


def metadata(**overrides: Any) -> dict[str, str]:
    params = {
        "name": "Shop <sync>",
        "description": "Sends orders to amoCRM",
        "redirect_uri": REDIRECT_URI,
        "secrets_uri": SECRETS_URI,
        "logo": "https://shop.example/logo.png",
        "scopes": "crm,notifications",
        "state": "st-1",
    }
    params.update(overrides)
    return {k: v for k, v in params.items() if v is not None}


async def open_and_answer(
    control: httpx.AsyncClient, account: dict[str, Any], decision: str = "allow", **params: Any
) -> httpx.Response:
    page = await control.get("/oauth/", params=metadata(**params))
    assert page.status_code == 200, page.text
    nonce = re.search(r'name="nonce" value="([^"]+)"', page.text)
    assert nonce
    return await control.post(
        "/oauth/",
        data={"nonce": nonce.group(1), "decision": decision, "account_id": str(account["id"])},
    )


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


# --- the script ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/auth/button.min.js", "/auth/button.js"])
async def test_button_script_is_served(control: httpx.AsyncClient, path: str) -> None:
    """amoCRM's /auth/button.min.js and Kommo's /auth/button.js render the button for
    `amocrm_oauth` / `kommo_oauth` script tags and open a 750×580 popup on …/oauth/."""
    reply = await control.get(path)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("application/javascript")
    script = reply.text
    for needle in ("amocrm_oauth", "kommo_oauth", "750", "580", '"/oauth/?"', "window.open("):
        assert needle in script
    for attribute in ("client-id", "title", "compact", "class-name", "color", "state", "mode"):
        assert f'"{attribute}"' in script
    assert '"error-callback"' in script
    for key in ("name", "description", "redirect_uri", "secrets_uri", "logo", "scopes"):
        assert f'"{key}"' in script


# --- consent in "create integration" mode ----------------------------------------------------


async def test_metadata_consent_page_offers_to_create_the_integration(
    control: httpx.AsyncClient, account: dict[str, Any]
) -> None:
    """A metadata button's consent page describes the integration it will create."""
    page = await control.get("/oauth/", params=metadata())
    assert page.status_code == 200
    assert "Установить интеграцию «Shop &lt;sync&gt;»" in page.text
    assert "Sends orders to amoCRM" in page.text
    assert 'src="https://shop.example/logo.png"' in page.text
    assert 'data-scope="crm"' in page.text
    assert 'data-scope="notifications"' in page.text


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"secrets_uri": None}, "secrets_uri"),
        ({"redirect_uri": "ftp://shop.example/cb"}, "redirect_uri"),
        ({"name": " "}, "name"),
        ({"scopes": "crm,files"}, "scopes"),
        ({"logo": "javascript:alert(1)"}, "logo"),
    ],
)
async def test_metadata_must_be_valid(
    control: httpx.AsyncClient, overrides: dict[str, Any], message: str
) -> None:
    """data-redirect_uri and data-secrets_uri are URLs, data-scopes only crm and
    notifications; a broken button gets an error page, not a consent form."""
    page = await control.get("/oauth/", params=metadata(**overrides))
    assert page.status_code == 400
    assert message in page.text
    assert "nonce" not in page.text


async def test_https_secrets_uri_required_by_setting(control: httpx.AsyncClient) -> None:
    """amoCRM requires https for data-secrets_uri; the sandbox does when the switch is on."""
    plain = metadata(secrets_uri="http://shop.example/secrets")
    assert (await control.get("/oauth/", params=plain)).status_code == 200
    await control.patch("/_sandbox/config", json={"secrets_uri_require_https": True})
    refused = await control.get("/oauth/", params=plain)
    assert refused.status_code == 400
    assert "https" in refused.text


# --- Allow: secrets POST, then redirect -------------------------------------------------------


async def test_allow_posts_secrets_before_redirecting_with_code(
    control: httpx.AsyncClient,
    account: dict[str, Any],
    integrator: Integrator,
    sandbox: Sandbox,
    sandbox_app: Any,
) -> None:
    """On consent amoCRM creates the integration, POSTs {client_id, client_secret, state} as
    JSON to secrets_uri — always before — the browser lands on redirect_uri with code, referer,
    state, platform and client_id; the code exchanges with the new credentials."""
    reply = await open_and_answer(control, account)
    redirected_at = time.monotonic()
    assert reply.status_code == 303, reply.text
    (posted,) = integrator.received
    assert posted["method"] == "POST"
    assert posted["url"] == SECRETS_URI
    assert posted["content_type"] == "application/json"
    secrets_body = posted["json"]
    assert set(secrets_body) == {"client_id", "client_secret", "state"}
    assert secrets_body["state"] == "st-1"
    client_id = secrets_body["client_id"]
    # Ordering: when the POST arrived the integration existed but no code had been issued, so no
    # redirect could have been sent yet.
    assert client_id in posted["integrations"]
    assert posted["codes_issued"] == 0
    assert posted["at"] < redirected_at

    query = query_of(reply.headers["location"])
    assert reply.headers["location"].startswith(REDIRECT_URI + "?")
    assert query["client_id"] == client_id
    assert query["state"] == "st-1"
    assert query["referer"] == "acme.amocrm.ru"
    assert query["platform"] == "1"

    integration = sandbox.state.integrations[client_id]
    assert integration.name == "Shop <sync>"
    assert integration.redirect_uri == REDIRECT_URI
    assert integration.scopes == ["crm", "notifications"]
    assert integration.created_in_account_id == account["id"]
    assert integration.installs == {account["id"]: True}

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=sandbox_app), base_url=f"https://{query['referer']}"
    ) as api:
        tokens = await api.post(
            "/oauth2/access_token",
            json={
                "client_id": client_id,
                "client_secret": secrets_body["client_secret"],
                "grant_type": "authorization_code",
                "code": query["code"],
                "redirect_uri": REDIRECT_URI,
            },
        )
    assert tokens.status_code == 200, tokens.text


async def test_secrets_state_is_null_when_absent(
    control: httpx.AsyncClient, account: dict[str, Any], integrator: Integrator
) -> None:
    """`state` is sent as null when the button had no data-state."""
    reply = await open_and_answer(control, account, state=None)
    assert reply.status_code == 303
    assert integrator.received[0]["json"]["state"] is None
    assert "state" not in query_of(reply.headers["location"])


@pytest.mark.parametrize("status", [204, 201, 302, 400, 500])
async def test_any_reply_but_200_aborts_the_install(
    control: httpx.AsyncClient,
    account: dict[str, Any],
    integrator: Integrator,
    sandbox: Sandbox,
    status: int,
) -> None:
    """A reply other than exactly 200 makes the popup fail ("… (Code 204)") with no redirect;
    the new integration is gone and no code exists."""
    integrator.reply = status
    reply = await open_and_answer(control, account)
    assert reply.status_code == 502
    assert "location" not in reply.headers
    assert f"(Code {status})" in reply.text
    assert len(integrator.received) == 1  # sent once, never retried
    assert sandbox.state.integrations == {}
    assert sandbox.state.codes == {}


@pytest.mark.parametrize(
    ("failure", "shown"),
    [
        (httpx.ReadTimeout("slow"), "timeout"),
        (httpx.ConnectError("refused"), "connection refused"),
        (httpx.RemoteProtocolError("eof"), "transport error"),
    ],
)
async def test_unreachable_secrets_uri_aborts_the_install(
    control: httpx.AsyncClient,
    account: dict[str, Any],
    integrator: Integrator,
    sandbox: Sandbox,
    failure: Exception,
    shown: str,
) -> None:
    """A timeout or connection error is a failed secrets POST too."""
    integrator.reply = failure
    reply = await open_and_answer(control, account)
    assert reply.status_code == 502
    assert shown in reply.text
    assert sandbox.state.integrations == {}


async def test_deny_creates_nothing(
    control: httpx.AsyncClient, account: dict[str, Any], integrator: Integrator, sandbox: Sandbox
) -> None:
    """Refusing a metadata button creates no integration and sends no secrets."""
    reply = await open_and_answer(control, account, decision="deny")
    assert reply.status_code == 303
    assert query_of(reply.headers["location"]) == {"error": "access_denied", "state": "st-1"}
    assert integrator.received == []
    assert sandbox.state.integrations == {}


async def test_post_message_mode_reports_the_new_client_id(
    control: httpx.AsyncClient, account: dict[str, Any], integrator: Integrator
) -> None:
    """In post_message mode the popup posts the grant with the new integration's id."""
    reply = await open_and_answer(control, account, mode="post_message")
    assert reply.status_code == 200
    found = re.search(r'id="finish-data">(.*?)</script>', reply.text, re.S)
    assert found
    message = httpx.Response(200, content=found.group(1).encode()).json()["message"]
    assert message["client_id"] == integrator.received[0]["json"]["client_id"]
    assert message["code"].startswith("def502")


async def test_button_integration_belongs_to_its_account(
    control: httpx.AsyncClient, account: dict[str, Any], integrator: Integrator
) -> None:
    """The integration is created in the account that consented; its consent page offers only
    that account."""
    await control.post("/_sandbox/accounts", json={"subdomain": "other"})
    await open_and_answer(control, account)
    client_id = integrator.received[0]["json"]["client_id"]
    page = await control.get("/oauth", params={"client_id": client_id})
    assert re.findall(r'<option value="(\d+)"', page.text) == [str(account["id"])]


# --- control: button-install and the outbound log --------------------------------------------


async def test_control_button_install(
    control: httpx.AsyncClient,
    account: dict[str, Any],
    integrator: Integrator,
    sandbox_app: Any,
) -> None:
    """POST /_sandbox/button-install does what a browser Allow does: secrets POST first, then
    {client_id, code, redirect_url}."""
    reply = await control.post(
        "/_sandbox/button-install",
        json={
            "account_id": account["id"],
            "name": "Shop",
            "redirect_uri": REDIRECT_URI,
            "secrets_uri": SECRETS_URI,
            "state": "ctl",
            "scopes": ["crm"],
        },
    )
    assert reply.status_code == 201, reply.text
    body = reply.json()
    assert set(body) == {"client_id", "code", "redirect_url"}
    posted = integrator.received[0]
    assert posted["json"]["client_id"] == body["client_id"]
    assert posted["json"]["state"] == "ctl"
    assert posted["codes_issued"] == 0
    assert query_of(body["redirect_url"])["code"] == body["code"]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=sandbox_app), base_url="https://acme.amocrm.ru"
    ) as api:
        tokens = await api.post(
            "/oauth2/access_token",
            data={
                "client_id": body["client_id"],
                "client_secret": posted["json"]["client_secret"],
                "grant_type": "authorization_code",
                "code": body["code"],
                "redirect_uri": REDIRECT_URI,
            },
        )
    assert tokens.status_code == 200


async def test_control_button_install_failure_is_502_and_installs_nothing(
    control: httpx.AsyncClient, account: dict[str, Any], integrator: Integrator
) -> None:
    """A failed secrets POST → 502 {detail} and nothing installed."""
    integrator.reply = 204
    reply = await control.post(
        "/_sandbox/button-install",
        json={
            "account_id": account["id"],
            "name": "Shop",
            "redirect_uri": REDIRECT_URI,
            "secrets_uri": SECRETS_URI,
        },
    )
    assert reply.status_code == 502
    assert "(Code 204)" in reply.json()["detail"]
    assert (await control.get("/_sandbox/integrations")).json() == []


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"name": "Shop", "redirect_uri": REDIRECT_URI, "secrets_uri": SECRETS_URI}, 422),
        ({"account_id": 1, "name": "S", "redirect_uri": REDIRECT_URI, "secrets_uri": SECRETS_URI}, 404),
        ({"account_id": "ACC", "name": "S", "redirect_uri": REDIRECT_URI, "secrets_uri": "x"}, 422),
        ({"account_id": "ACC", "name": "S", "redirect_uri": REDIRECT_URI, "secrets_uri": SECRETS_URI, "scopes": ["files"]}, 422),
        ({"account_id": "ACC", "name": "S", "redirect_uri": REDIRECT_URI, "secrets_uri": SECRETS_URI, "extra": 1}, 422),
    ],
)  # fmt: skip
async def test_control_button_install_validates(
    control: httpx.AsyncClient,
    account: dict[str, Any],
    integrator: Integrator,
    body: dict[str, Any],
    status: int,
) -> None:
    """Control API: wrong input is a 4xx {detail}; nothing is sent."""
    if body.get("account_id") == "ACC":
        body = {**body, "account_id": account["id"]}
    reply = await control.post("/_sandbox/button-install", json=body)
    assert reply.status_code == status, reply.text
    assert "detail" in reply.json()
    assert integrator.received == []


async def test_outbound_log_lists_secrets_posts_without_secrets(
    control: httpx.AsyncClient, account: dict[str, Any], integrator: Integrator
) -> None:
    """GET /_sandbox/outbound?kind=secrets shows every secrets POST and its outcome, never the
    client secret."""
    await open_and_answer(control, account)
    integrator.reply = 204
    await open_and_answer(control, account, state="second")
    log = await control.get("/_sandbox/outbound", params={"kind": "secrets"})
    entries = log.json()
    assert [(e["status"], e["state"]) for e in entries] == [(200, "st-1"), (204, "second")]
    assert entries[0]["url"] == SECRETS_URI
    assert entries[0]["account_id"] == account["id"]
    assert entries[0]["client_id"] == integrator.received[0]["json"]["client_id"]
    assert integrator.received[0]["json"]["client_secret"] not in log.text
    assert (await control.get("/_sandbox/outbound", params={"kind": "disconnect"})).json() == []
    assert (await control.get("/_sandbox/outbound", params={"kind": "nope"})).status_code == 400
