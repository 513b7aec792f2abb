"""What the routes answer is what the OpenAPI document says, on SQLite and PostgreSQL: every
error is ``{"error", "detail"}`` with a code the operation documents, and the status answers keep
every key the service has always sent (no more, no less)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import jsonschema_rs
import pytest


def _validator(document: dict[str, Any], name: str) -> Any:
    return jsonschema_rs.validator_for(
        {"$ref": f"#/components/schemas/{name}", "components": document["components"]},
        validate_formats=True,
    )


def _documented_codes(document: dict[str, Any], method: str, path: str, status: int) -> set[str]:
    answer = document["paths"][path][method]["responses"][str(status)]
    examples = answer["content"]["application/json"]["examples"]
    return {example["value"]["error"] for example in examples.values()}


async def test_errors_from_every_layer_have_one_shape_and_a_documented_code(stack: Any) -> None:
    document = stack.app.openapi()
    error_body = _validator(document, "ErrorBody")
    app, http = stack.app_headers(), stack.http
    expired = stack.user_token("user-42", exp=int(time.time()) - 60)
    other = {"Authorization": f"Bearer {stack.user_token('user-7')}"}
    cases: list[tuple[str, str, httpx.Response, int, str]] = [
        ("get", "/amocrm/status", await http.get("/amocrm/status"), 401, "unauthorized"),
        (
            "get",
            "/amocrm/status",
            await http.get("/amocrm/status", headers=app),
            400,
            "owner_required",
        ),
        (
            "get",
            "/amocrm/status",
            await http.get("/amocrm/status", params={"owner": "user-42"}, headers=other),
            403,
            "owner_mismatch",
        ),
        (
            "get",
            "/amocrm/status",
            await http.get("/amocrm/status", headers={"Authorization": f"Bearer {expired}"}),
            401,
            "token_expired",
        ),
        (
            "get",
            "/amocrm/status",
            await http.get(
                "/amocrm/status", params={"owner": "user-42"}, headers={"X-API-Key": "amb_nope"}
            ),
            401,
            "invalid_api_key",
        ),
        (
            "delete",
            "/amocrm/disconnect",
            await http.delete("/amocrm/disconnect", params={"owner": "user-42"}, headers=app),
            404,
            "connection_not_found",
        ),
        (
            "get",
            "/amocrm/auth",
            await http.get(
                "/amocrm/auth", params={"owner": "user-42", "format": "xml"}, headers=app
            ),
            422,
            "validation_error",
        ),
        (
            "get",
            "/amocrm/auth",
            await http.get("/amocrm/auth", params={"owner": "user-42", "token": stack.app_key}),
            401,
            "api_key_in_url",
        ),
        (
            "post",
            "/amocrm/tokens",
            await http.post(
                "/amocrm/tokens",
                content=b"{" + b" " * (stack.settings.server.max_body_bytes + 1) + b"}",
                headers={**stack.admin_headers(), "content-type": "application/json"},
            ),
            413,
            "body_too_large",
        ),
        (
            "post",
            "/amocrm/tokens",
            await http.post(
                "/amocrm/tokens",
                json={"owner": "user-42", "domain": "mycompany.example.com", "access_token": "x"},
                headers=stack.admin_headers(),
            ),
            400,
            "invalid_domain",
        ),
        (
            "post",
            "/amocrm/exchange-code",
            await http.post(
                "/amocrm/exchange-code",
                json={"code": "not-a-code", "referer": "acme.amocrm.ru", "owner": "user-42"},
                headers=app,
            ),
            400,
            "exchange_failed",
        ),
        (
            "get",
            "/amocrm/uninstall",
            await http.get("/amocrm/uninstall"),
            401,
            "unauthorized",
        ),
    ]
    for method, path, reply, status, code in cases:
        label = f"{method.upper()} {path} -> {reply.status_code} {reply.text[:200]}"
        assert reply.status_code == status, label
        body = reply.json()
        assert body["error"] == code, label
        assert isinstance(body["detail"], str), label
        assert error_body.is_valid(body), label
        assert code in _documented_codes(document, method, path, status), label

    # The routes no operation has: Starlette's 404 and 405, in the same shape.
    missing = await http.get("/amocrm/nothing-here")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
    assert error_body.is_valid(missing.json())
    wrong = await http.put("/amocrm/status", headers=app)
    assert wrong.status_code == 405
    assert wrong.json()["error"] == "method_not_allowed"
    assert error_body.is_valid(wrong.json())


@pytest.mark.parametrize("header", ["Authorization", "X-API-Key"])
async def test_an_api_key_authenticates_in_either_header(stack: Any, header: str) -> None:
    value = f"Bearer {stack.app_key}" if header == "Authorization" else stack.app_key
    reply = await stack.http.get(
        "/amocrm/status", params={"owner": "user-42"}, headers={header: value}
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["status"] == "not_connected"


async def _raw_status(stack: Any, owner: str) -> dict[str, Any]:
    async with stack.services.db.read() as session:
        found: dict[str, Any] = await stack.services.connect.status(session, owner)
    return found


async def test_status_answers_keep_every_key_the_service_sends(stack: Any) -> None:
    document = stack.app.openapi()
    status_schema = _validator(document, "ConnectionStatus")
    disconnected_schema = _validator(document, "Disconnected")
    headers = stack.app_headers()

    async def status(**params: str) -> dict[str, Any]:
        reply = await stack.http.get(
            "/amocrm/status", params={"owner": "user-42", **params}, headers=headers
        )
        assert reply.status_code == 200, reply.text
        body: dict[str, Any] = reply.json()
        assert status_schema.is_valid(body), body
        return body

    never = await status()
    assert never == await _raw_status(stack, "user-42")
    assert "longLived" not in never
    assert never["domain"] is None  # null, not left out

    await stack.connect("user-42")
    connected = await status()
    assert connected == await _raw_status(stack, "user-42")
    assert set(connected) == {*never, "longLived", "connectionId"}

    verified = await status(verify="true")
    assert verified == {**connected, "verified": True}

    reply = await stack.http.delete(
        "/amocrm/disconnect", params={"owner": "user-42"}, headers=headers
    )
    assert reply.status_code == 200, reply.text
    assert disconnected_schema.is_valid(reply.json())
    assert reply.json() == {"disconnected": True, **(await _raw_status(stack, "user-42"))}
