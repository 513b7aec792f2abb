"""Property: nothing a client sends to the token endpoint makes the sandbox answer 500
(amoCRM: "400 = bad data, details in body")."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlencode

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amobridge.sandbox import Clock, Sandbox, SandboxConfig, create_sandbox_app

FIELDS = ["client_id", "client_secret", "grant_type", "code", "refresh_token", "redirect_uri"]
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "application/x-www-form-urlencoded",
    "application/problem+json",
    "multipart/form-data; boundary=x",
    "text/plain",
    "text/xml",
    "",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.sampled_from(["authorization_code", "refresh_token", "def50200", ""]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=6)
field_maps = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), values, max_size=7)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["json", "form", "raw"]))
    if kind == "raw":
        return draw(st.binary(max_size=200))
    fields = draw(field_maps)
    if kind == "json":
        return json.dumps(draw(st.one_of(st.just(fields), values))).encode()
    return urlencode(
        [(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in fields.items()]
    ).encode()


def test_token_endpoint_never_answers_500(signing_key: rsa.RSAPrivateKey) -> None:
    """Random bodies, encodings and content types get a 4xx problem+json, never a 500."""
    sandbox = Sandbox(
        SandboxConfig(rate_limit_enabled=False), clock=Clock(), signing_key=signing_key
    )
    app = create_sandbox_app(sandbox=sandbox)
    sandbox.state.create_account("acme")

    with asyncio.Runner() as runner:
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="https://acme.amocrm.ru"
        )

        @settings(
            max_examples=200,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(body=bodies(), content_type=st.sampled_from(CONTENT_TYPES))
        def post(body: bytes, content_type: str) -> None:
            async def send() -> httpx.Response:
                return await client.post(
                    "/oauth2/access_token", content=body, headers={"content-type": content_type}
                )

            reply = runner.run(send())
            assert 400 <= reply.status_code < 500, (reply.status_code, reply.text)
            assert reply.headers["content-type"].startswith("application/problem+json")
            problem: dict[str, Any] = reply.json()
            assert problem["status"] == reply.status_code
            assert problem["title"]

        try:
            post()
        finally:
            runner.run(client.aclose())
