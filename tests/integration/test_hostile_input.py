"""Hostile input at every edge of the service: odd characters, absurd sizes and numbers, each
answered with a 4xx and a JSON ``detail`` (the callback page: a 400 page), never a 500."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import httpx
import jwt

NON_ASCII_STATE = "\u03a9.\u00fc"
# amobridge reads an imported token's claims without verifying; any key will do (32 bytes
# keeps PyJWT from warning about a short HMAC key).
UNVERIFIED_KEY = "k" * 32


def _assert_json_4xx(reply: httpx.Response, *codes: int) -> None:
    assert reply.status_code in codes, (reply.status_code, reply.text[:300])
    assert isinstance(reply.json()["detail"], str)


async def _button_state(stack: Any) -> str:
    page = await stack.http.get(
        "/amocrm/connect", params={"owner": "u"}, headers=stack.app_headers()
    )
    assert page.status_code == 200, page.text
    return page.text.split('data-state="', 1)[1].split('"', 1)[0]


# --- non-ASCII state and signature: hmac.compare_digest refuses non-ASCII str ---------------


async def test_callback_with_non_ascii_state_is_a_400_page(stack: Any) -> None:
    reply = await stack.http.get("/amocrm/callback", params={"state": NON_ASCII_STATE})
    assert reply.status_code == 400
    assert 'data-error="state_forged"' in reply.text


async def test_secrets_with_non_ascii_state_is_refused(stack: Any) -> None:
    for body in (
        '{"client_id": "c", "client_secret": "s", "state": "\u03a9.\u00fc"}',
        # a lone surrogate is valid JSON but cannot be encoded at all
        '{"client_id": "c", "client_secret": "s", "state": "\\ud800.x"}',
    ):
        reply = await stack.http.post(
            "/amocrm/secrets", content=body, headers={"content-type": "application/json"}
        )
        _assert_json_4xx(reply, 403)
        assert "forged" in reply.json()["detail"]


async def test_uninstall_with_non_ascii_signature_or_client_uuid_is_a_401(stack: Any) -> None:
    await stack.connect("u")
    client_id = stack.integration["client_id"]
    account_id = stack.account["id"]
    for params in (
        {"account_id": account_id, "client_uuid": client_id, "signature": "\u00fc" * 64},
        {"account_id": account_id, "client_uuid": "\u03a9" + client_id, "signature": "0" * 64},
    ):
        _assert_json_4xx(await stack.http.get("/amocrm/uninstall", params=params), 401)
    status = await stack.http.get(
        "/amocrm/status", params={"owner": "u"}, headers=stack.app_headers()
    )
    assert status.json()["status"] == "active"


# --- account ids: only ASCII digits that fit a BIGINT ---------------------------------------


async def test_uninstall_account_id_must_be_ascii_digits(stack: Any) -> None:
    await stack.connect("u")
    client_id = stack.integration["client_id"]
    secret = stack.integration["client_secret"].encode()
    for account_id in ("\u00b2\u00b3", "\u0661\u0662", "9" * 19, "9" * 20, "-1", " 1"):
        # correctly signed, so only the account id itself can be refused (on PostgreSQL a
        # 20-digit id would overflow BIGINT in the lookup)
        signed = f"{client_id}|{int(account_id) if account_id.isascii() else 0}".encode()
        signature = hmac.new(secret, signed, hashlib.sha256).hexdigest()
        reply = await stack.http.get(
            "/amocrm/uninstall",
            params={"account_id": account_id, "client_uuid": client_id, "signature": signature},
        )
        _assert_json_4xx(reply, 401)


# --- bodies the JSON parser cannot take -----------------------------------------------------


async def test_secrets_with_deeply_nested_json_is_a_400(stack: Any) -> None:
    for body in ("[" * 100_000 + "]" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000):
        reply = await stack.http.post(
            "/amocrm/secrets", content=body, headers={"content-type": "application/json"}
        )
        _assert_json_4xx(reply, 400)
        assert "nested too deeply" in reply.json()["detail"]


# --- token import: claims of an unverified JWT are input too --------------------------------


async def test_import_tokens_with_absurd_exp_or_account_id_is_a_400(stack: Any) -> None:
    for claims, named in (
        ({"exp": 1e18}, "exp"),
        ({"exp": 1e308}, "exp"),
        ({"exp": -1e12}, "exp"),
        ({"exp": 10**400}, "exp"),
        ({"exp": float("nan")}, "exp"),
        ({"exp": 2_000_000_000, "account_id": 10**30}, "account_id"),
    ):
        token = jwt.encode(claims, UNVERIFIED_KEY, algorithm="HS256")
        reply = await stack.http.post(
            "/amocrm/tokens",
            json={"owner": "dev", "domain": "acme", "access_token": token},
            headers=stack.admin_headers(),
        )
        _assert_json_4xx(reply, 400)
        assert f"{named} claim" in reply.json()["detail"]
        assert token not in reply.text


async def test_import_tokens_with_a_plausible_exp_still_works(stack: Any) -> None:
    token = jwt.encode(
        {"exp": time.time() + 86400, "account_id": 1}, UNVERIFIED_KEY, algorithm="HS256"
    )
    reply = await stack.http.post(
        "/amocrm/tokens",
        json={"owner": "dev", "domain": "acme", "access_token": token},
        headers=stack.admin_headers(),
    )
    assert reply.status_code == 201, reply.text


# --- owners and ids: one check wherever they enter (PostgreSQL refuses NUL and > 255) -------


async def test_owner_with_nul_or_too_long_is_refused_in_query_jwt_and_body(stack: Any) -> None:
    for owner in ("a\x00b", "x" * 256, "a\x1fb"):
        reply = await stack.http.get(
            "/amocrm/status", params={"owner": owner}, headers=stack.app_headers()
        )
        _assert_json_4xx(reply, 400)
        assert "owner" in reply.json()["detail"]
        reply = await stack.http.get(
            "/amocrm/status", headers={"Authorization": f"Bearer {stack.user_token(owner)}"}
        )
        _assert_json_4xx(reply, 401)
        assert "sub" in reply.json()["detail"]
        token = jwt.encode({"exp": 2_000_000_000}, UNVERIFIED_KEY, algorithm="HS256")
        reply = await stack.http.post(
            "/amocrm/tokens",
            json={"owner": owner, "domain": "acme", "access_token": token},
            headers=stack.admin_headers(),
        )
        _assert_json_4xx(reply, 422)
        assert "owner" in reply.json()["detail"]
        reply = await stack.http.post(
            "/amocrm/exchange-code",
            json={"owner": owner, "code": "c", "referer": "acme.amocrm.ru"},
            headers=stack.app_headers(),
        )
        _assert_json_4xx(reply, 422)


async def test_ids_with_nul_are_refused_in_secrets_uninstall_and_token_import(
    stack: Any,
) -> None:
    state = await _button_state(stack)
    reply = await stack.http.post(
        "/amocrm/secrets", json={"client_id": "a\x00b", "client_secret": "s", "state": state}
    )
    _assert_json_4xx(reply, 400)
    assert "client_id" in reply.json()["detail"]
    reply = await stack.http.get(
        "/amocrm/uninstall",
        params={"account_id": "1", "client_uuid": "a\x00b", "signature": "0" * 64},
    )
    _assert_json_4xx(reply, 401)
    token = jwt.encode({"exp": 2_000_000_000}, UNVERIFIED_KEY, algorithm="HS256")
    for field in ("client_id", "redirect_uri", "domain"):
        body = {
            "owner": "dev",
            "domain": "acme",
            "access_token": token,
            "refresh_token": "r",
            "client_id": "c",
            "client_secret": "s",
            field: "a\x00b",
        }
        reply = await stack.http.post("/amocrm/tokens", json=body, headers=stack.admin_headers())
        _assert_json_4xx(reply, 400, 422)
        assert "a\x00b" not in reply.text


# --- body size: refused before it is read whole ---------------------------------------------

LIMIT = 1024 * 1024  # AMOBRIDGE_SERVER__MAX_BODY_BYTES's default


async def test_body_over_the_limit_is_a_413_at_once_and_at_the_limit_reaches_the_route(
    stack: Any,
) -> None:
    assert stack.settings.server.max_body_bytes == LIMIT
    over = await stack.http.post(
        "/amocrm/secrets", content=b" " * (LIMIT + 1), headers={"content-type": "text/plain"}
    )
    _assert_json_4xx(over, 413)
    assert str(LIMIT) in over.json()["detail"]
    at = await stack.http.post(
        "/amocrm/secrets", content=b" " * LIMIT, headers={"content-type": "text/plain"}
    )
    _assert_json_4xx(at, 400)  # the route's own answer: an empty body
    assert at.json()["detail"] == "empty body"
    for path in ("/amocrm/tokens", "/amocrm/exchange-code", "/healthz"):
        reply = await stack.http.post(path, content=b"{" * (LIMIT + 1))
        _assert_json_4xx(reply, 413)


async def test_chunked_body_is_cut_off_as_soon_as_it_passes_the_limit(stack: Any) -> None:
    chunk = b" " * 65536
    sent = 0

    async def endless() -> Any:
        nonlocal sent
        for _ in range(10_000):  # 640 MiB, were it read whole
            sent += len(chunk)
            yield chunk

    reply = await stack.http.post(
        "/amocrm/secrets", content=endless(), headers={"content-type": "text/plain"}
    )
    _assert_json_4xx(reply, 413)
    assert "transfer-encoding" in reply.request.headers
    assert sent <= LIMIT + 2 * len(chunk)


async def test_chunked_body_under_the_limit_reaches_the_route(stack: Any) -> None:
    async def small() -> Any:
        yield b'{"client_id": "c", '
        yield b'"client_secret": "s", "state": "x.y"}'

    reply = await stack.http.post(
        "/amocrm/secrets", content=small(), headers={"content-type": "application/json"}
    )
    _assert_json_4xx(reply, 403)
    assert "forged" in reply.json()["detail"]


# --- the OpenAPI document declares what the amoCRM-facing routes take ------------------------


async def test_openapi_declares_callback_secrets_and_uninstall_inputs(stack: Any) -> None:
    paths = (await stack.http.get("/openapi.json")).json()["paths"]
    names = {p["name"] for p in paths["/amocrm/callback"]["get"]["parameters"]}
    assert names >= {"code", "state", "referer", "error", "platform", "client_id", "from_widget"}
    names = {p["name"] for p in paths["/amocrm/uninstall"]["get"]["parameters"]}
    assert names == {"account_id", "client_uuid", "signature"}
    content = paths["/amocrm/secrets"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "application/x-www-form-urlencoded"}
    assert set(content["application/json"]["schema"]["properties"]) == {
        "client_id",
        "client_secret",
        "state",
    }
