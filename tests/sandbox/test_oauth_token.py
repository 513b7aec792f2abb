"""Conformance: the sandbox's token endpoint ``POST /oauth2/access_token``
(https://www.amocrm.ru/developers/content/oauth/step-by-step).

Each test names the fact it checks. Tokens are checked the way the API layer checks them:
``sandbox.tokens.authenticate`` (the API routes are not this module's subject).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest

from amobridge.sandbox import Sandbox
from amobridge.sandbox.tokens import OAUTH_PROBLEM_TYPE, fingerprint

REDIRECT_URI = "https://app.example/callback"
BAD_REQUEST = {
    "title": "Некорректный запрос",
    "type": OAUTH_PROBLEM_TYPE,
    "status": 400,
    "detail": "В запросе отсутствует ряд параметров или параметры невалидны",
}


@dataclass
class World:
    """One account (``acme.amocrm.ru``) and one integration, with helpers for the token endpoint."""

    control: httpx.AsyncClient
    api: httpx.AsyncClient  # base_url https://acme.amocrm.ru, no Bearer
    account: dict[str, Any]
    integration: dict[str, Any]

    @property
    def client_id(self) -> str:
        return str(self.integration["client_id"])

    async def code(self, state: str | None = "s") -> str:
        body: dict[str, Any] = {"client_id": self.client_id, "account_id": self.account["id"]}
        if state is not None:
            body["state"] = state
        reply = await self.control.post("/_sandbox/authorize", json=body)
        assert reply.status_code == 200, reply.text
        return str(reply.json()["code"])

    def exchange_body(self, code: str, **overrides: Any) -> dict[str, Any]:
        body = {
            "client_id": self.client_id,
            "client_secret": self.integration["client_secret"],
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
        }
        body.update(overrides)
        return {k: v for k, v in body.items() if v is not None}

    def refresh_body(self, refresh_token: str, **overrides: Any) -> dict[str, Any]:
        body = {
            "client_id": self.client_id,
            "client_secret": self.integration["client_secret"],
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "redirect_uri": REDIRECT_URI,
        }
        body.update(overrides)
        return {k: v for k, v in body.items() if v is not None}

    async def exchange(self, code: str, **overrides: Any) -> httpx.Response:
        return await self.api.post(
            "/oauth2/access_token", json=self.exchange_body(code, **overrides)
        )

    async def refresh(self, refresh_token: str, **overrides: Any) -> httpx.Response:
        return await self.api.post(
            "/oauth2/access_token", json=self.refresh_body(refresh_token, **overrides)
        )

    async def pair(self) -> dict[str, Any]:
        reply = await self.exchange(await self.code())
        assert reply.status_code == 200, reply.text
        return dict(reply.json())

    async def advance(self, seconds: float) -> None:
        reply = await self.control.post("/_sandbox/clock", json={"advance_seconds": seconds})
        assert reply.status_code == 200, reply.text

    async def configure(self, **changes: Any) -> None:
        reply = await self.control.patch("/_sandbox/config", json=changes)
        assert reply.status_code == 200, reply.text


@pytest.fixture
async def world(control: httpx.AsyncClient, sandbox_app: Any) -> AsyncIterator[World]:
    account = (await control.post("/_sandbox/accounts", json={"subdomain": "acme"})).json()
    integration = (
        await control.post(
            "/_sandbox/integrations", json={"name": "Shop", "redirect_uri": REDIRECT_URI}
        )
    ).json()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=sandbox_app), base_url="https://acme.amocrm.ru"
    ) as api:
        yield World(control, api, account, integration)


def assert_oauth_problem(reply: httpx.Response, status: int, hint: str | None) -> None:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/problem+json")
    body = reply.json()
    assert body.get("hint") == hint
    assert body["type"] == OAUTH_PROBLEM_TYPE
    assert body["status"] == status
    assert "error" not in body  # captured amoCRM bodies carry no RFC 6749 error field


# --- authorization code -----------------------------------------------------------------------


async def test_code_exchange_returns_a_bearer_pair(world: World, sandbox: Sandbox) -> None:
    """The reply is {token_type: Bearer, expires_in: 86400, access_token: JWT,
    refresh_token: def502…} and nothing else by default (server_time only by setting)."""
    reply = await world.exchange(await world.code())
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert set(body) == {"token_type", "expires_in", "access_token", "refresh_token"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 86400
    assert body["refresh_token"].startswith("def502")
    assert body["access_token"].count(".") == 2
    access = sandbox.tokens.authenticate(body["access_token"])
    assert access is not None
    assert access.account_id == world.account["id"]


async def test_form_encoded_body_is_accepted(world: World, sandbox: Sandbox) -> None:
    """amoCRM's docs send JSON, its PHP SDK form-urlencoded: both work, for both grants."""
    reply = await world.api.post(
        "/oauth2/access_token", data=world.exchange_body(await world.code())
    )
    assert reply.status_code == 200, reply.text
    refreshed = await world.api.post(
        "/oauth2/access_token", data=world.refresh_body(reply.json()["refresh_token"])
    )
    assert refreshed.status_code == 200, refreshed.text
    assert sandbox.tokens.authenticate(refreshed.json()["access_token"]) is not None


async def test_json_body_without_content_type_is_sniffed(world: World) -> None:
    """Accept both encodings, whatever header a hand-written client forgot to send."""
    import json

    content = json.dumps(world.exchange_body(await world.code())).encode()
    reply = await world.api.post(
        "/oauth2/access_token", content=content, headers={"content-type": ""}
    )
    assert reply.status_code == 200, reply.text


async def test_code_is_single_use(world: World) -> None:
    """A code is exchanged once; the second try is 400 "Authorization code has been
    revoked" with amoCRM's OAuthProblemJson body."""
    code = await world.code()
    assert (await world.exchange(code)).status_code == 200
    again = await world.exchange(code)
    assert_oauth_problem(again, 400, "Authorization code has been revoked")
    assert again.json() == {"hint": "Authorization code has been revoked", **BAD_REQUEST}


async def test_code_expires_after_20_minutes(world: World) -> None:
    """A code lives 20 minutes: at 19:59 it still works, after 20:00 it has expired."""
    fresh, stale = await world.code(), await world.code()
    await world.advance(20 * 60 - 1)
    assert (await world.exchange(fresh)).status_code == 200
    await world.advance(2)
    assert_oauth_problem(await world.exchange(stale), 400, "Authorization code has expired")


async def test_redirect_uri_must_match_exactly(world: World) -> None:
    """redirect_uri must equal the integration's setting exactly (a trailing slash fails)."""
    code = await world.code()
    for wrong in (REDIRECT_URI + "/", REDIRECT_URI.replace("https", "http"), None):
        reply = await world.exchange(code, redirect_uri=wrong)
        assert_oauth_problem(reply, 400, "Redirect URI is not associated with client")
    assert (await world.exchange(code)).status_code == 200  # the failures did not spend it


async def test_wrong_secret_is_401_bad_client(world: World) -> None:
    """A wrong client secret is 401 "Некорректный клиент" / "Авторизация клиента не прошла"."""
    reply = await world.exchange(await world.code(), client_secret="not-the-secret")
    assert_oauth_problem(reply, 401, None)
    assert reply.json()["title"] == "Некорректный клиент"
    assert reply.json()["detail"] == "Авторизация клиента не прошла"


async def test_unknown_client_id(world: World) -> None:
    """An unknown client_id is 400 "Check the `client_id` parameter"."""
    reply = await world.exchange(
        await world.code(), client_id="00000000-0000-4000-8000-000000000000"
    )
    assert_oauth_problem(reply, 400, "Check the `client_id` parameter")


async def test_garbage_code_cannot_be_decrypted(world: World) -> None:
    """A code the server never issued is "Cannot decrypt the authorization code"."""
    reply = await world.exchange("def50200" + "ab" * 40)
    assert_oauth_problem(reply, 400, "Cannot decrypt the authorization code")


async def test_code_of_another_client_is_rejected(world: World) -> None:
    """A code is bound to the integration it was issued to."""
    other = (
        await world.control.post(
            "/_sandbox/integrations", json={"name": "Other", "redirect_uri": REDIRECT_URI}
        )
    ).json()
    reply = await world.exchange(
        await world.code(), client_id=other["client_id"], client_secret=other["client_secret"]
    )
    assert reply.status_code == 400
    assert reply.json()["hint"] != "Check the `client_id` parameter"


@pytest.mark.parametrize(
    ("missing", "hint"),
    [
        ("grant_type", "Check the `grant_type` parameter"),
        ("client_id", "Check the `client_id` parameter"),
        ("client_secret", "Check the `client_secret` parameter"),
        ("code", "Check the `code` parameter"),
    ],
)
async def test_missing_field_is_a_400_naming_it(world: World, missing: str, hint: str) -> None:
    """Missing parameters are a 400 whose hint names the parameter."""
    body = world.exchange_body(await world.code())
    del body[missing]
    reply = await world.api.post("/oauth2/access_token", json=body)
    assert_oauth_problem(reply, 400, hint)


@pytest.mark.parametrize("grant_type", ["password", "client_credentials", "REFRESH_TOKEN"])
async def test_unknown_grant_type_is_a_400(world: World, grant_type: str) -> None:
    """400 = bad data; only authorization_code and refresh_token are grants."""
    reply = await world.exchange(await world.code(), grant_type=grant_type)
    assert_oauth_problem(
        reply, 400, "The authorization grant type is not supported by the authorization server"
    )


@pytest.mark.parametrize(
    ("content", "content_type", "hint"),
    [
        (b"", "application/json", "Check that all required parameters have been provided"),
        (b"{not json", "application/json", "Request body is not valid JSON"),
        (b"[1, 2]", "application/json", "Request body must be a JSON object"),
        (b'"text"', "application/json", "Request body must be a JSON object"),
        (b"\xff\xfe\x00code=1", "application/x-www-form-urlencoded", "Request body is not valid form data"),
        (b"<xml/>", "text/xml", "Unsupported content type: send application/json or application/x-www-form-urlencoded"),
        (b'{"grant_type": "authorization_code", "client_id": 7}', "application/json", "Check the `client_id` parameter"),
        (b'{"grant_type": ["refresh_token"]}', "application/json", "Check the `grant_type` parameter"),
        (b"[" * 100_000, "application/json", "Request body is not valid JSON"),
    ],
)  # fmt: skip
async def test_malformed_body_is_a_400_never_a_500(
    world: World, content: bytes, content_type: str, hint: str
) -> None:
    """amoCRM: "400 = bad data, details in body", for bodies no client should send too."""
    reply = await world.api.post(
        "/oauth2/access_token", content=content, headers={"content-type": content_type}
    )
    assert_oauth_problem(reply, 400, hint)


# --- JWT -------------------------------------------------------------------------------------


async def test_access_token_is_an_rs256_jwt_with_amocrm_claims(world: World) -> None:
    """RS256 JWT with aud, jti, iat, nbf, exp, sub (str), account_id (int), base_domain,
    api_domain, grant_type, version 2, scopes, hash_uuid, user_flags; verifiable with the sandbox's
    public key."""
    public_key = (await world.control.get("/_sandbox/public-key")).text
    pair = await world.pair()
    assert jwt.get_unverified_header(pair["access_token"])["alg"] == "RS256"
    claims = jwt.decode(
        pair["access_token"],
        public_key,
        algorithms=["RS256"],
        audience=world.client_id,
        leeway=5,
    )
    assert set(claims) >= {
        "aud", "jti", "iat", "nbf", "exp", "sub", "account_id", "base_domain", "api_domain",
        "grant_type", "version", "scopes", "hash_uuid", "user_flags",
    }  # fmt: skip
    assert claims["aud"] == world.client_id
    assert isinstance(claims["jti"], str)
    assert claims["jti"]
    assert claims["nbf"] == claims["iat"]
    assert claims["exp"] - claims["iat"] == 86400
    assert abs(claims["iat"] - time.time()) < 60
    assert isinstance(claims["sub"], str)
    assert claims["sub"] == str(world.account["admin_user_id"])
    assert isinstance(claims["account_id"], int)
    assert claims["account_id"] == world.account["id"]
    assert claims["base_domain"] == "amocrm.ru"
    assert claims["api_domain"] == "api-b.amocrm.ru"
    assert claims["version"] == 2
    assert claims["scopes"] == ["crm", "notifications"]
    assert isinstance(claims["hash_uuid"], str)
    assert isinstance(claims["user_flags"], int)
    assert isinstance(claims["grant_type"], str)

    refreshed = await world.refresh(pair["refresh_token"])
    again = jwt.decode(
        refreshed.json()["access_token"], public_key, algorithms=["RS256"], audience=world.client_id
    )
    assert again["grant_type"] == "refresh_token"
    assert again["jti"] != claims["jti"]


async def test_kommo_account_gets_its_own_domains(
    control: httpx.AsyncClient, sandbox_app: Any
) -> None:
    """A Kommo account lives on its own base domain; the JWT says so."""
    account = (
        await control.post(
            "/_sandbox/accounts", json={"subdomain": "globex", "base_domain": "kommo.com"}
        )
    ).json()
    integration = (
        await control.post(
            "/_sandbox/integrations", json={"name": "K", "redirect_uri": REDIRECT_URI}
        )
    ).json()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=sandbox_app), base_url="https://globex.kommo.com"
    ) as api:
        world = World(control, api, account, integration)
        claims = jwt.decode(
            (await world.pair())["access_token"], options={"verify_signature": False}
        )
    assert claims["base_domain"] == "kommo.com"
    assert claims["api_domain"].endswith(".kommo.com")


# --- hosts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["nosuch.amocrm.ru", "www.amocrm.ru", "api-b.amocrm.ru", "acme.kommo.com", "acme.amocrm.com"],
)
async def test_wrong_account_host_is_invalid_account(
    world: World, sandbox_app: Any, host: str
) -> None:
    """The token endpoint lives on the account host only; `www`, `api-b`, a typo or the
    wrong base domain answer 400 "Invalid account"."""
    code = await world.code()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=sandbox_app), base_url=f"https://{host}"
    ) as client:
        reply = await client.post("/oauth2/access_token", json=world.exchange_body(code))
    assert_oauth_problem(reply, 400, "Invalid account")
    assert (await world.exchange(code)).status_code == 200  # the code was not spent


async def test_another_accounts_host_is_invalid_account(world: World, sandbox_app: Any) -> None:
    """Exchanging acme's code on beta's host is "Invalid account"."""
    await world.control.post("/_sandbox/accounts", json={"subdomain": "beta"})
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=sandbox_app), base_url="https://beta.amocrm.ru"
    ) as client:
        reply = await client.post(
            "/oauth2/access_token", json=world.exchange_body(await world.code())
        )
    assert_oauth_problem(reply, 400, "Invalid account")


async def test_bare_host_is_accepted(world: World) -> None:
    """Sandbox convenience: a bare host (sandbox.test, 127.0.0.1) names no account and works."""
    reply = await world.control.post(
        "/oauth2/access_token", json=world.exchange_body(await world.code())
    )
    assert reply.status_code == 200, reply.text


# --- refresh ---------------------------------------------------------------------------------


async def test_refresh_rotates_and_a_reused_token_is_revoked(world: World) -> None:
    """Refresh tokens are single-use: each refresh returns a new pair; presenting the
    spent one is 401 "Token has been revoked"."""
    first = await world.pair()
    second = await world.refresh(first["refresh_token"])
    assert second.status_code == 200
    new = second.json()
    assert new["refresh_token"] != first["refresh_token"]
    assert new["access_token"] != first["access_token"]
    reused = await world.refresh(first["refresh_token"])
    assert_oauth_problem(reused, 401, "Token has been revoked")
    assert (await world.refresh(new["refresh_token"])).status_code == 200


async def test_old_access_token_is_revoked_after_refresh(world: World, sandbox: Sandbox) -> None:
    """Once its refresh token is spent the old access token stops (amoCRM does not document
    this; a setting, default on)."""
    first = await world.pair()
    new = (await world.refresh(first["refresh_token"])).json()
    assert sandbox.tokens.authenticate(first["access_token"]) is None
    assert sandbox.tokens.authenticate(new["access_token"]) is not None
    for token, status in ((first["access_token"], 401), (new["access_token"], 200)):
        reply = await world.api.get("/api/v4/account", headers={"Authorization": f"Bearer {token}"})
        assert reply.status_code == status


async def test_old_access_token_survives_refresh_when_switched_off(
    world: World, sandbox: Sandbox
) -> None:
    """That undocumented rule is a switch; off, the old access token lives until its exp."""
    await world.configure(revoke_old_access_on_refresh=False)
    first = await world.pair()
    assert (await world.refresh(first["refresh_token"])).status_code == 200
    assert sandbox.tokens.authenticate(first["access_token"]) is not None


async def test_refresh_with_wrong_secret_or_redirect_is_rejected(world: World) -> None:
    """A refresh checks the client and the redirect_uri too, and a failure does not
    spend the token."""
    pair = await world.pair()
    assert_oauth_problem(await world.refresh(pair["refresh_token"], client_secret="x"), 401, None)
    assert_oauth_problem(
        await world.refresh(pair["refresh_token"], redirect_uri=REDIRECT_URI + "?x=1"),
        400,
        "Redirect URI is not associated with client",
    )
    no_token = world.refresh_body(pair["refresh_token"])
    del no_token["refresh_token"]
    assert_oauth_problem(
        await world.api.post("/oauth2/access_token", json=no_token),
        400,
        "Check the `refresh_token` parameter",
    )
    assert (await world.refresh(pair["refresh_token"])).status_code == 200


async def test_refresh_token_expires_after_3_months_of_disuse(world: World) -> None:
    """A refresh token lives 3 months and each refresh restarts the 3 months."""
    pair = await world.pair()
    await world.advance(89 * 86400)
    renewed = await world.refresh(pair["refresh_token"])
    assert renewed.status_code == 200  # day 89: alive, and a new 3 months start
    await world.advance(89 * 86400)
    again = await world.refresh(renewed.json()["refresh_token"])
    assert again.status_code == 200  # day 178: alive thanks to the refresh on day 89
    await world.advance(90 * 86400 + 1)
    expired = await world.refresh(again.json()["refresh_token"])
    assert expired.status_code in (400, 401)
    assert expired.json()["hint"] == "Token has expired"


async def test_access_token_expires_after_24_hours(world: World, sandbox: Sandbox) -> None:
    """The access token lives 86400 s (its `exp`)."""
    pair = await world.pair()
    await world.advance(86400 - 5)
    assert sandbox.tokens.authenticate(pair["access_token"]) is not None
    await world.advance(10)
    assert sandbox.tokens.authenticate(pair["access_token"]) is None


async def test_lifetimes_are_configurable(world: World, sandbox: Sandbox) -> None:
    """Lifetimes are amoCRM's by default and shortenable per test via PATCH /_sandbox/config."""
    await world.configure(code_ttl=60, access_ttl=600, refresh_ttl=3600)
    code, stale = await world.code(), await world.code()
    reply = await world.exchange(code)
    assert reply.json()["expires_in"] == 600
    await world.advance(61)
    assert_oauth_problem(await world.exchange(stale), 400, "Authorization code has expired")
    await world.advance(600)
    assert sandbox.tokens.authenticate(reply.json()["access_token"]) is None
    await world.advance(3600)
    assert (await world.refresh(reply.json()["refresh_token"])).json()[
        "hint"
    ] == "Token has expired"


async def test_server_time_is_added_by_setting(world: World, sandbox: Sandbox) -> None:
    """Kommo adds `server_time` (int); the sandbox does when `include_server_time` is on."""
    await world.configure(include_server_time=True)
    body = await world.pair()
    assert isinstance(body["server_time"], int)
    assert abs(body["server_time"] - sandbox.clock.now()) < 5


# --- long-lived tokens -----------------------------------------------------------------------


async def test_long_lived_token_has_no_refresh_token_and_works(
    world: World, sandbox: Sandbox
) -> None:
    """A long-lived token (1 day–5 years) has no refresh token, an empty grant_type, and
    its expiry in `exp`."""
    reply = await world.control.post(
        "/_sandbox/long-lived-tokens",
        json={
            "client_id": world.client_id,
            "account_id": world.account["id"],
            "ttl_seconds": 86400 * 30,
        },
    )
    assert reply.status_code == 201, reply.text
    body = reply.json()
    assert "refresh_token" not in body
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["grant_type"] == ""
    assert claims["exp"] - claims["iat"] == 86400 * 30
    assert body["expires_at"] == claims["exp"]
    assert sandbox.tokens.authenticate(body["access_token"]) is not None
    bearer = {"Authorization": f"Bearer {body['access_token']}"}
    account = await world.api.get("/api/v4/account", headers=bearer)
    assert account.status_code == 200, account.text
    assert account.json()["id"] == world.account["id"]
    await world.advance(86400 * 30 + 1)
    assert sandbox.tokens.authenticate(body["access_token"]) is None
    assert (await world.api.get("/api/v4/account", headers=bearer)).status_code == 401


# --- request log and faults ------------------------------------------------------------------


async def test_request_log_records_each_token_call_without_tokens(world: World) -> None:
    """The request log (how later tests prove "exactly one refresh") records grant_type,
    client_id, account_id and the presented refresh token's fingerprint, never a token."""
    await world.control.delete("/_sandbox/requests")
    pair = await world.pair()
    await world.refresh(pair["refresh_token"])
    await world.refresh(pair["refresh_token"])  # reused: 401
    log = await world.control.get(
        "/_sandbox/requests", params={"path_prefix": "/oauth2/access_token"}
    )
    records = log.json()
    assert [(r["grant_type"], r["status"]) for r in records] == [
        ("authorization_code", 200),
        ("refresh_token", 200),
        ("refresh_token", 401),
    ]
    assert all(r["client_id"] == world.client_id for r in records)
    assert all(r["account_id"] == world.account["id"] for r in records)
    assert records[0]["refresh_token_fingerprint"] is None
    assert records[1]["refresh_token_fingerprint"] == fingerprint(pair["refresh_token"])
    assert records[2]["refresh_token_fingerprint"] == fingerprint(pair["refresh_token"])
    assert pair["refresh_token"] not in log.text
    assert pair["access_token"] not in log.text


async def test_bare_host_log_finds_the_account_from_the_grant(world: World) -> None:
    """The log's account_id comes from the code or refresh token when the host names none."""
    await world.control.delete("/_sandbox/requests")
    await world.control.post("/oauth2/access_token", json=world.exchange_body("def50200unknown"))
    code = await world.code()
    await world.control.post(
        "/oauth2/access_token", json=world.exchange_body(code, client_secret="x")
    )
    records = (await world.control.get("/_sandbox/requests")).json()
    assert [r["account_id"] for r in records] == [None, world.account["id"]]


async def test_injected_error_before_the_endpoint(world: World) -> None:
    """Fault injection covers the token endpoint: a 500 before serving changes nothing."""
    code = await world.code()
    await world.control.post(
        "/_sandbox/faults",
        json={"kind": "error", "status": 500, "path_prefix": "/oauth2/access_token", "count": 1},
    )
    failed = await world.exchange(code)
    assert failed.status_code == 500
    assert failed.json()["title"] == "ErrInternalServer"
    assert (await world.exchange(code)).status_code == 200  # the code was not spent
    log = (await world.control.get("/_sandbox/requests")).json()
    assert [r["fault"] for r in log if r["path"] == "/oauth2/access_token"] == ["error", None]


async def test_injected_gateway_timeout_after_a_refresh_spends_the_token(world: World) -> None:
    """The ambiguous refresh: the server rotated the pair but the client saw a 504, so
    the retry with the same refresh token is 401 "Token has been revoked" — and the log shows
    both attempts with the same fingerprint."""
    pair = await world.pair()
    await world.control.delete("/_sandbox/requests")
    await world.control.post(
        "/_sandbox/faults",
        json={
            "kind": "error",
            "status": 504,
            "phase": "after",
            "path_prefix": "/oauth2/",
            "count": 1,
        },
    )
    lost = await world.refresh(pair["refresh_token"])
    assert lost.status_code == 504
    assert lost.headers["content-type"].startswith("text/html")
    assert_oauth_problem(await world.refresh(pair["refresh_token"]), 401, "Token has been revoked")
    records = (await world.control.get("/_sandbox/requests")).json()
    assert [r["fault"] for r in records] == ["error-after", None]
    assert {r["refresh_token_fingerprint"] for r in records} == {fingerprint(pair["refresh_token"])}


async def test_injected_revoke_kills_the_grant(world: World, sandbox: Sandbox) -> None:
    """A revoke fault on the token endpoint revokes the integration's tokens in that
    account and answers 401 "Token has been revoked"."""
    pair = await world.pair()
    await world.control.post(
        "/_sandbox/faults",
        json={"kind": "revoke", "path_prefix": "/oauth2/access_token", "count": 1},
    )
    assert_oauth_problem(await world.refresh(pair["refresh_token"]), 401, "Token has been revoked")
    assert sandbox.tokens.authenticate(pair["access_token"]) is None
    assert_oauth_problem(await world.refresh(pair["refresh_token"]), 401, "Token has been revoked")


async def test_injected_rate_limit_on_the_token_endpoint(world: World) -> None:
    """A 429 burst can hit the token endpoint too; the body is JSON, no Retry-After."""
    await world.control.post(
        "/_sandbox/faults", json={"kind": "rate_limit", "path_prefix": "/oauth2/", "count": 1}
    )
    reply = await world.exchange(await world.code())
    assert reply.status_code == 429
    assert "retry-after" not in reply.headers
    assert reply.json()["status"] == 429
