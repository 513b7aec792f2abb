"""Conformance: the consent page ``/oauth`` and the redirect back
(https://www.amocrm.ru/developers/content/oauth/step-by-step).

The page is driven here as a browser without JavaScript would: GET the page, POST its form. The
script-driven modes (popup, post_message) are checked by what the finish page hands its script,
and end to end in ``test_browser_oauth.py``.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from amobridge.sandbox import Sandbox

REDIRECT_URI = "https://app.example/amocrm/callback?tenant=7"


@dataclass
class Page:
    status: int
    text: str
    url: str

    @property
    def nonce(self) -> str:
        found = re.search(r'name="nonce" value="([^"]+)"', self.text)
        assert found, self.text
        return found.group(1)

    @property
    def options(self) -> list[tuple[int, bool]]:
        """(account id, selected) for each option of the account select."""
        return [
            (int(m.group(1)), bool(m.group(2)))
            for m in re.finditer(r'<option value="(\d+)"( selected)?>', self.text)
        ]


@dataclass
class World:
    client: httpx.AsyncClient  # a browser on http://sandbox.test (a bare host)
    sandbox_app: Any
    accounts: dict[str, dict[str, Any]]
    integration: dict[str, Any]

    async def open(self, path: str = "/oauth", **params: Any) -> Page:
        params.setdefault("client_id", self.integration["client_id"])
        params = {k: v for k, v in params.items() if v is not None}
        reply = await self.client.get(path, params=params)
        return Page(reply.status_code, reply.text, str(reply.url))

    async def answer(
        self, page: Page, decision: str, account: str | int | None = "acme", path: str = "/oauth"
    ) -> httpx.Response:
        form = {"nonce": page.nonce, "decision": decision}
        if account is not None:
            form["account_id"] = str(
                self.accounts[account]["id"] if isinstance(account, str) else account
            )
        return await self.client.post(path, data=form)


@pytest.fixture
async def world(control: httpx.AsyncClient, sandbox_app: Any) -> World:
    accounts = {}
    for sub, base in (("acme", "amocrm.ru"), ("globex", "kommo.com"), ("initech", "amocrm.com")):
        reply = await control.post(
            "/_sandbox/accounts", json={"subdomain": sub, "base_domain": base}
        )
        accounts[sub] = reply.json()
    integration = (
        await control.post(
            "/_sandbox/integrations",
            json={"name": "Школа <Продаж>", "redirect_uri": REDIRECT_URI, "scopes": ["crm"]},
        )
    ).json()
    return World(control, sandbox_app, accounts, integration)


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


def finish_data(text: str) -> dict[str, Any]:
    found = re.search(
        r'<script type="application/json" id="finish-data">(.*?)</script>', text, re.S
    )
    assert found, text
    data: dict[str, Any] = json.loads(found.group(1))
    return data


# --- the page --------------------------------------------------------------------------------


async def test_consent_page_shows_integration_scopes_and_every_account(world: World) -> None:
    """The authorize page names the integration and its scopes, lets the user pick the
    account, and offers Allow and Deny."""
    page = await world.open()
    assert page.status == 200
    assert "Школа &lt;Продаж&gt;" in page.text  # escaped, not raw HTML
    assert 'data-scope="crm"' in page.text
    assert 'data-scope="notifications"' not in page.text
    assert [i for i, _ in page.options] == sorted(a["id"] for a in world.accounts.values())
    assert 'value="allow"' in page.text
    assert 'value="deny"' in page.text


@pytest.mark.parametrize("path", ["/oauth", "/oauth/"])
async def test_both_paths_and_unknown_params_are_accepted(world: World, path: str) -> None:
    """The sandbox accepts /oauth and /oauth/ and ignores unknown params (Kommo's origin,
    response_type, a stray redirect_uri, ...)."""
    page = await world.open(path, state="x", mode="popup", response_type="code", foo="bar")
    assert page.status == 200
    assert "nonce" in page.text


async def test_account_is_preselected_by_id_or_subdomain(world: World) -> None:
    """The page preselects the account named by account_id or subdomain (first one otherwise)."""
    globex = world.accounts["globex"]["id"]
    assert (globex, True) in (await world.open(account_id=globex)).options
    assert (globex, True) in (await world.open(subdomain="globex")).options
    assert (globex, True) in (await world.open(subdomain="globex.kommo.com")).options
    default = (await world.open()).options
    assert [selected for _, selected in default].count(True) == 1
    assert default[0][1]


async def test_unknown_client_id_is_an_html_error_page(world: World) -> None:
    """An unknown client_id gets an error page (4xx HTML), not a consent form."""
    page = await world.open(client_id="00000000-0000-4000-8000-000000000000")
    assert 400 <= page.status < 500
    assert "<html" in page.text
    assert "nonce" not in page.text
    missing = await world.client.get("/oauth")
    assert missing.status_code == 400
    assert missing.headers["content-type"].startswith("text/html")


async def test_account_host_form_is_404_unless_switched_on(world: World) -> None:
    """amoCRM documents only the `www` authorize page: `{sub}.amocrm.ru/oauth` is served only by
    setting; then it is fixed to that account."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=world.sandbox_app), base_url="https://acme.amocrm.ru"
    ) as acme:
        params = {"client_id": world.integration["client_id"]}
        off = await acme.get("/oauth", params=params)
        assert off.status_code == 404
        assert off.headers["content-type"].startswith("text/html")
        await world.client.patch("/_sandbox/config", json={"account_host_authorize": True})
        on = await acme.get("/oauth", params=params)
        assert on.status_code == 200
        page = Page(on.status_code, on.text, str(on.url))
        assert page.options == [(world.accounts["acme"]["id"], True)]
        other = await acme.post(
            "/oauth",
            data={
                "nonce": page.nonce,
                "decision": "allow",
                "account_id": str(world.accounts["globex"]["id"]),
            },
        )
        assert other.status_code == 400  # only the host's own account can be chosen


async def test_www_host_serves_the_page(world: World) -> None:
    """The authorize page lives on www.amocrm.ru / www.kommo.com."""
    for host in ("www.amocrm.ru", "www.kommo.com"):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=world.sandbox_app), base_url=f"https://{host}"
        ) as www:
            reply = await www.get("/oauth/", params={"client_id": world.integration["client_id"]})
        assert reply.status_code == 200


# --- Allow / Deny ----------------------------------------------------------------------------


async def test_allow_redirects_with_code_referer_state_platform_client_id(world: World) -> None:
    """Allow lands on redirect_uri with code, referer (bare host), state (verbatim),
    platform and client_id; the code exchanges on the referer host."""
    state = "a b&c=d/ü"
    page = await world.open(state=state)
    reply = await world.answer(page, "allow")
    assert reply.status_code == 303
    location = reply.headers["location"]
    assert location.startswith(REDIRECT_URI + "&")  # the redirect_uri's own query is kept
    query = query_of(location)
    assert query["tenant"] == "7"
    assert query["code"].startswith("def502")
    assert query["referer"] == "acme.amocrm.ru"
    assert query["state"] == state
    assert query["platform"] == "1"
    assert query["client_id"] == world.integration["client_id"]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=world.sandbox_app), base_url=f"https://{query['referer']}"
    ) as api:
        tokens = await api.post(
            "/oauth2/access_token",
            json={
                "client_id": world.integration["client_id"],
                "client_secret": world.integration["client_secret"],
                "grant_type": "authorization_code",
                "code": query["code"],
                "redirect_uri": REDIRECT_URI,
            },
        )
    assert tokens.status_code == 200, tokens.text


async def test_state_is_absent_when_not_sent(world: World) -> None:
    """`state` is absent from the redirect when the authorize URL had none."""
    reply = await world.answer(await world.open(), "allow")
    assert "state" not in query_of(reply.headers["location"])


@pytest.mark.parametrize(
    ("account", "platform", "referer"),
    [("acme", "1", "acme.amocrm.ru"), ("globex", "2", "globex.kommo.com"), ("initech", "2", "initech.amocrm.com")],
)  # fmt: skip
async def test_platform_follows_the_account_domain(
    world: World, account: str, platform: str, referer: str
) -> None:
    """`platform` 1 = amocrm.ru, 2 = amocrm.com / kommo.com; referer is the account's host."""
    reply = await world.answer(await world.open(state="s"), "allow", account)
    query = query_of(reply.headers["location"])
    assert query["platform"] == platform
    assert query["referer"] == referer


async def test_deny_redirects_with_access_denied(world: World, sandbox: Sandbox) -> None:
    """Refusal lands on redirect_uri with error=access_denied&state=…, and no code exists."""
    reply = await world.answer(await world.open(state="st8"), "deny", account=None)
    assert reply.status_code == 303
    query = query_of(reply.headers["location"])
    assert query == {"tenant": "7", "error": "access_denied", "state": "st8"}
    assert not sandbox.state.codes


async def test_nonce_is_single_use_and_required(world: World) -> None:
    """The consent form carries a single-use nonce: a replayed or forged POST is refused."""
    page = await world.open()
    assert (await world.answer(page, "allow")).status_code == 303
    replay = await world.answer(page, "allow")
    assert replay.status_code == 400
    forged = await world.client.post(
        "/oauth", data={"nonce": "forged", "decision": "allow", "account_id": "1"}
    )
    assert forged.status_code == 400
    garbage = await world.client.post(
        "/oauth", content=b"\xff\xfe", headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert garbage.status_code == 400


async def test_nonce_expires_after_an_hour(world: World) -> None:
    """A consent page left open for over an hour (sandbox time) must be reopened."""
    page = await world.open()
    await world.client.post("/_sandbox/clock", json={"advance_seconds": 3601})
    assert (await world.answer(page, "allow")).status_code == 400


async def test_allow_needs_a_valid_account(world: World) -> None:
    """Allow without an account, or with one that does not exist, is refused."""
    assert (await world.answer(await world.open(), "allow", account=None)).status_code == 400
    assert (await world.answer(await world.open(), "allow", account=999)).status_code == 400
    for odd in ("³", "9" * 5000, "-1", " ", "1e3"):
        page = await world.open(account_id=odd)
        assert page.status == 200
        reply = await world.client.post(
            "/oauth", data={"nonce": page.nonce, "decision": "allow", "account_id": odd}
        )
        assert reply.status_code == 400, odd


async def test_no_accounts_disables_allow(control: httpx.AsyncClient) -> None:
    """With no account in the sandbox the page says how to make one and Allow is disabled."""
    integration = (
        await control.post(
            "/_sandbox/integrations", json={"name": "X", "redirect_uri": REDIRECT_URI}
        )
    ).json()
    reply = await control.get("/oauth", params={"client_id": integration["client_id"]})
    assert reply.status_code == 200
    assert 'id="no-accounts"' in reply.text
    assert re.search(r'value="allow"\s+disabled', reply.text)


# --- popup and post_message ------------------------------------------------------------------


async def test_popup_mode_hands_the_redirect_to_the_opener(world: World) -> None:
    """mode=popup: the main window (the opener) is redirected; the popup closes."""
    reply = await world.answer(await world.open(state="p", mode="popup"), "allow")
    assert reply.status_code == 200
    data = finish_data(reply.text)
    assert data["mode"] == "popup"
    assert data["notify"] is False
    query = query_of(data["url"])
    assert query["state"] == "p"
    assert query["code"].startswith("def502")
    assert html.escape(data["url"]) in reply.text  # the no-script link


async def test_post_message_mode_posts_the_grant_to_the_opener(world: World) -> None:
    """mode=post_message: the popup posts {code, referer, state, platform, client_id} to
    window.opener (target: the origin param, else the redirect_uri's origin)."""
    reply = await world.answer(await world.open(state="pm", mode="post_message"), "allow")
    data = finish_data(reply.text)
    assert data["notify"] is True
    message = data["message"]
    assert set(message) == {"code", "referer", "state", "platform", "client_id"}
    assert message["referer"] == "acme.amocrm.ru"
    assert message["state"] == "pm"
    assert message["platform"] == "1"
    assert message["code"] == query_of(data["url"])["code"]
    assert data["target_origin"] == "https://app.example"
    with_origin = await world.answer(
        await world.open(mode="post_message", origin="https://shop.example:8443"), "deny", None
    )
    denied = finish_data(with_origin.text)
    assert denied["target_origin"] == "https://shop.example:8443"
    assert denied["message"] == {
        "error": "access_denied",
        "client_id": world.integration["client_id"],
    }


async def test_popup_deny_notifies_the_error_callback(world: World) -> None:
    """With data-error-callback the button's popup reports a refusal to the opener (which
    calls the callback with {client_id, error}) instead of navigating it."""
    page = await world.open(mode="popup", error_callback="1", state="e")
    data = finish_data((await world.answer(page, "deny", None)).text)
    assert data["notify"] is True
    assert data["message"]["error"] == "access_denied"
    plain = finish_data((await world.answer(await world.open(mode="popup"), "deny", None)).text)
    assert plain["notify"] is False
    assert query_of(plain["url"])["error"] == "access_denied"


async def test_unknown_mode_is_plain_navigation(world: World) -> None:
    """Modes are popup and post_message; anything else navigates like no mode at all."""
    reply = await world.answer(await world.open(mode="iframe"), "allow")
    assert reply.status_code == 303


# --- demo callback ---------------------------------------------------------------------------


async def test_demo_callback_shows_the_grant_but_no_secret(world: World) -> None:
    """`make run`'s demo integration lands on /_sandbox/demo/callback: it shows code, referer and
    state, and never a client secret."""
    reply = await world.answer(await world.open(state="demo"), "allow")
    query = query_of(reply.headers["location"])
    page = await world.client.get("/_sandbox/demo/callback", params=query)
    assert page.status_code == 200
    assert query["code"] in page.text
    assert 'id="param-referer">acme.amocrm.ru<' in page.text
    assert 'id="param-state">demo<' in page.text
    assert world.integration["client_secret"] not in page.text
    denied = await world.client.get("/_sandbox/demo/callback", params={"error": "access_denied"})
    assert "access_denied" in denied.text
