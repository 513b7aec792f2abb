"""One error shape for the whole HTTP API: ``{"error": code, "detail": sentence}``, whichever
part of the service answers (a route's ServiceError, validation, Starlette's 404/405, the body
limit, an unexpected exception)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import FastAPI, Query, Request

from amobridge.errors import Conflict, Forbidden, NotFound, ServiceError
from amobridge.errors import Unauthorized as UnauthorizedError
from amobridge.web.errors import install_error_handlers
from amobridge.web.limits import BodySizeLimitMiddleware

SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


def test_service_errors_carry_a_code_of_their_class_or_their_own() -> None:
    assert ServiceError("x").code == "bad_request"
    assert NotFound("x").code == "not_found"
    assert UnauthorizedError("x").code == "unauthorized"
    assert Forbidden("x").code == "forbidden"
    assert Conflict("x").code == "conflict"
    named = NotFound("no amoCRM connection for this owner", code="connection_not_found")
    assert (named.code, named.status_code) == ("connection_not_found", 404)
    # A status given without a code takes that status's code, not the class's.
    assert ServiceError("x", status_code=403).code == "forbidden"
    assert ServiceError("x", status_code=409, code="not_configured").code == "not_configured"
    assert ServiceError("x").code == "bad_request"  # the class attribute is untouched


def _app(max_body_bytes: int = 64) -> FastAPI:
    app = FastAPI()
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=max_body_bytes)
    install_error_handlers(app)

    @app.get("/conflict")
    async def conflict() -> None:
        raise Conflict("credentials for this state were already received", retry_after=3)

    @app.get("/named")
    async def named() -> None:
        raise ServiceError("the connection needs its owner again", code="reauth_required")

    @app.get("/items")
    async def items(limit: Annotated[int, Query(le=10)] = 1) -> dict[str, int]:
        return {"limit": limit}

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug, with a secret in its message: s3cr3t")

    return app


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield client


def _error(reply: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = reply.json()
    assert body["error"] == code, body
    assert SNAKE.match(body["error"])
    assert isinstance(body["detail"], str)
    assert body["detail"].strip()
    return body


async def test_a_service_error_has_its_code_detail_and_extra_fields(
    http: httpx.AsyncClient,
) -> None:
    body = _error(await http.get("/conflict"), 409, "conflict")
    assert body == {
        "error": "conflict",
        "detail": "credentials for this state were already received",
        "retry_after": 3,
    }
    _error(await http.get("/named"), 400, "reauth_required")


async def test_starlette_404_and_405_say_where_the_routes_are(http: httpx.AsyncClient) -> None:
    body = _error(await http.get("/nothing-here"), 404, "not_found")
    assert "/openapi.json" in body["detail"]
    reply = await http.delete("/items")
    body = _error(reply, 405, "method_not_allowed")
    assert "GET" in body["detail"]
    assert reply.headers["allow"] == "GET"


async def test_validation_is_a_422_with_a_string_detail(http: httpx.AsyncClient) -> None:
    body = _error(await http.get("/items", params={"limit": "99"}), 422, "validation_error")
    assert body["detail"].startswith("limit:")


async def test_the_body_limit_answers_413_declared_or_streamed(http: httpx.AsyncClient) -> None:
    _error(await http.post("/echo", content=b"x" * 65), 413, "body_too_large")

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"x" * 40

    body = _error(await http.post("/echo", content=chunks()), 413, "body_too_large")
    assert "AMOBRIDGE_SERVER__MAX_BODY_BYTES" in body["detail"]


async def test_a_malformed_content_length_is_a_400_in_the_same_shape() -> None:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/echo",
        "raw_path": b"/echo",
        "query_string": b"",
        "headers": [(b"content-length", b"12abc")],
        "root_path": "",
        "scheme": "http",
        "server": ("t", 80),
        "client": ("c", 1),
        "http_version": "1.1",
        "asgi": {"version": "3.0"},
    }
    await _app()(scope, receive, send)
    assert sent[0]["status"] == 400
    assert b'"error":"invalid_content_length"' in sent[1]["body"]


async def test_an_unexpected_exception_is_a_500_without_its_message(
    http: httpx.AsyncClient,
) -> None:
    body = _error(await http.get("/boom"), 500, "internal_error")
    assert "s3cr3t" not in body["detail"]
