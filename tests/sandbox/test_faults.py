"""Conformance: fault injection makes the sandbox fail as amoCRM and the network do
(amoCRM's error bodies, 429s and 403 bans; 5xx, 504s, timeouts, 429 bursts and revoked grants)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from amobridge.sandbox import Clock, Sandbox, SandboxConfig

PATH = "/api/v4/webhooks"
HOOK = {"destination": "https://hooks.example/amo", "settings": ["add_lead"]}


@pytest.fixture
async def sandbox(
    sandbox_config: SandboxConfig, signing_key: rsa.RSAPrivateKey
) -> AsyncIterator[Sandbox]:
    box = Sandbox(sandbox_config, clock=Clock(frozen=True), signing_key=signing_key)
    yield box
    await box.aclose()


class Env:
    def __init__(self, control: httpx.AsyncClient, app: Any) -> None:
        self.control = control
        self.app = app
        self.opened: list[httpx.AsyncClient] = []

    async def client(self, subdomain: str = "acme") -> tuple[dict[str, Any], httpx.AsyncClient]:
        account = (
            await self.control.post("/_sandbox/accounts", json={"subdomain": subdomain})
        ).json()
        integration = (
            await self.control.post(
                "/_sandbox/integrations",
                json={"name": "faults", "redirect_uri": "https://app.example/cb"},
            )
        ).json()
        token = (
            await self.control.post(
                "/_sandbox/long-lived-tokens",
                json={"client_id": integration["client_id"], "account_id": account["id"]},
            )
        ).json()["access_token"]
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url=f"https://{account['host']}",
            headers={"Authorization": f"Bearer {token}"},
        )
        self.opened.append(client)
        account["client_id"] = integration["client_id"]
        return account, client

    async def fault(self, **rule: Any) -> dict[str, Any]:
        reply = await self.control.post("/_sandbox/faults", json=rule)
        assert reply.status_code == 201, reply.text
        return dict(reply.json()[0])


@pytest.fixture
async def env(control: httpx.AsyncClient, sandbox_app: Any) -> AsyncIterator[Env]:
    made = Env(control, sandbox_app)
    yield made
    for client in made.opened:
        await client.aclose()


# --- kinds -------------------------------------------------------------------------------------


async def test_error_500_is_err_internal_server(env: Env) -> None:
    """A 500 is `{"title":"ErrInternalServer",…,"trace_id"}`."""
    _, api = await env.client()
    await env.fault(kind="error", count=1)
    reply = await api.get(PATH)
    assert reply.status_code == 500
    body = reply.json()
    assert body["title"] == "ErrInternalServer"
    assert body["status"] == 500
    assert body["type"] == "https://httpstatus.es/500"
    assert len(body["trace_id"]) >= 16
    assert (await api.get(PATH)).status_code == 204  # count=1: only once


@pytest.mark.parametrize("status", [502, 504])
async def test_gateway_errors_are_nginx_html(env: Env, status: int) -> None:
    """Gateway errors may be nginx HTML pages rather than JSON."""
    _, api = await env.client()
    await env.fault(kind="error", status=status)
    reply = await api.get(PATH)
    assert reply.status_code == status
    assert reply.headers["content-type"].startswith("text/html")
    assert f"<h1>{status} " in reply.text
    assert "nginx" in reply.text


async def test_other_statuses_are_problem_json(env: Env) -> None:
    """Other injected errors are amoCRM's problem JSON."""
    _, api = await env.client()
    await env.fault(kind="error", status=503)
    reply = await api.get(PATH)
    assert reply.status_code == 503
    assert reply.headers["content-type"].startswith("application/problem+json")
    assert reply.json()["type"] == "https://httpstatus.es/503"


async def test_timeout_holds_then_504(env: Env) -> None:
    """A timeout holds the request `delay` seconds, then answers a 504 HTML page."""
    _, api = await env.client()
    await env.fault(kind="timeout", delay=0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    reply = await api.get(PATH)
    assert loop.time() - started >= 0.05
    assert reply.status_code == 504
    assert "504 Gateway Time-out" in reply.text


async def test_timeout_trips_a_client_deadline(env: Env) -> None:
    """A long timeout fault is seen by a client with a short deadline as its own timeout."""
    _, api = await env.client()
    await env.fault(kind="timeout", delay=5)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await api.get(PATH)


async def test_slow_serves_normally_after_a_delay(env: Env) -> None:
    """`slow` holds the request, then serves it as usual."""
    _, api = await env.client()
    await api.post(PATH, json=HOOK)
    await env.fault(kind="slow", delay=0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    reply = await api.get(PATH)
    assert loop.time() - started >= 0.05
    assert reply.status_code == 200
    assert reply.json()["_embedded"]["webhooks"][0]["destination"] == HOOK["destination"]


async def test_drop_breaks_the_connection(env: Env) -> None:
    """A dropped connection reaches the client as httpx.RemoteProtocolError."""
    _, api = await env.client()
    await env.fault(kind="drop", count=1)
    with pytest.raises(httpx.RemoteProtocolError):
        await api.get(PATH)
    assert (await api.get(PATH)).status_code == 204


async def test_rate_limit_burst(env: Env) -> None:
    """A 429 burst of `count` answers, exactly like the limiter's (rate limiting off)."""
    _, api = await env.client()
    await env.fault(kind="rate_limit", count=3)
    replies = [await api.get(PATH) for _ in range(4)]
    assert [r.status_code for r in replies] == [429, 429, 429, 204]
    assert replies[0].json()["type"] == "https://httpstatus.es/429"
    assert "retry-after" not in replies[0].headers


async def test_rate_limit_faults_count_towards_a_ban(env: Env) -> None:
    """Injected 429s count as violations: enough of them ban the account (403)."""
    await env.control.patch("/_sandbox/config", json={"ban_after_violations": 2})
    account, api = await env.client()
    await env.fault(kind="rate_limit", count=2)
    assert (await api.get(PATH)).status_code == 429
    assert (await api.get(PATH)).status_code == 403
    assert (await api.get(PATH)).status_code == 403  # the fault is spent, the ban is not
    await env.control.post("/_sandbox/unban", json={"account_id": account["id"]})
    assert (await api.get(PATH)).status_code == 204


async def test_revoke_kills_the_grant(env: Env) -> None:
    """A revoked grant answers 401 and its token stays dead afterwards."""
    _, api = await env.client()
    await env.fault(kind="revoke", count=1)
    first = await api.get(PATH)
    assert first.status_code == 401
    assert first.json()["detail"] == "Invalid user name or password"
    assert (await api.get(PATH)).status_code == 401
    assert (await env.control.get("/_sandbox/faults")).json()[0]["fired"] == 1


# --- matching ----------------------------------------------------------------------------------


async def test_match_by_method(env: Env) -> None:
    """A rule with `method` fires only for that method."""
    _, api = await env.client()
    await env.fault(kind="error", method="post")
    assert (await api.get(PATH)).status_code == 204
    assert (await api.post(PATH, json=HOOK)).status_code == 500


async def test_match_by_path_prefix(env: Env) -> None:
    """A rule with `path_prefix` fires only under that prefix."""
    _, api = await env.client()
    await env.fault(kind="error", path_prefix="/api/v4/leads")
    assert (await api.get(PATH)).status_code == 204
    await env.fault(kind="error", path_prefix="/api/v4/web")
    assert (await api.get(PATH)).status_code == 500


async def test_match_by_account_and_client(env: Env) -> None:
    """Rules with `account_id` / `client_id` leave other accounts and integrations alone."""
    acme, acme_api = await env.client("acme")
    globex, globex_api = await env.client("globex")
    await env.fault(kind="error", account_id=acme["id"])
    assert (await acme_api.get(PATH)).status_code == 500
    assert (await globex_api.get(PATH)).status_code == 204
    await env.control.delete("/_sandbox/faults")
    await env.fault(kind="error", client_id=globex["client_id"])
    assert (await acme_api.get(PATH)).status_code == 204
    assert (await globex_api.get(PATH)).status_code == 500


async def test_count_limits_firing(env: Env) -> None:
    """`count` fires the rule for the next N matches only; the rule reports how often it fired."""
    _, api = await env.client()
    rule = await env.fault(kind="error", count=2)
    assert [(await api.get(PATH)).status_code for _ in range(3)] == [500, 500, 204]
    listed = (await env.control.get("/_sandbox/faults")).json()
    assert [(r["id"], r["fired"]) for r in listed] == [(rule["id"], 2)]


async def test_probability(env: Env) -> None:
    """`probability` 0 never fires, 1 always, 0.5 about half the time."""
    _, api = await env.client()
    await env.fault(kind="error", probability=0)
    assert {(await api.get(PATH)).status_code for _ in range(20)} == {204}
    await env.control.delete("/_sandbox/faults")
    await env.fault(kind="error", probability=0.5)
    codes = [(await api.get(PATH)).status_code for _ in range(200)]
    assert 40 <= codes.count(500) <= 160
    assert set(codes) == {204, 500}


# --- phase "after": the ambiguous write ----------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"kind": "error"}, 500),
        ({"kind": "error", "status": 504}, 504),
        ({"kind": "timeout", "delay": 0.01}, 504),
        ({"kind": "slow", "delay": 0.01}, 201),
    ],
)
async def test_after_phase_write_happened(env: Env, rule: dict[str, Any], expected: int) -> None:
    """With phase "after" the create happened but the client sees a failure (why creates carry
    idempotency keys)."""
    _, api = await env.client()
    await env.fault(**rule, phase="after", method="POST", count=1)
    reply = await api.post(PATH, json=HOOK)
    assert reply.status_code == expected
    listed = (await api.get(PATH)).json()["_embedded"]["webhooks"]
    assert [h["destination"] for h in listed] == [HOOK["destination"]]


async def test_after_phase_drop(env: Env) -> None:
    """A connection dropped after the write: the client gets a transport error, the data exists."""
    _, api = await env.client()
    await env.fault(kind="drop", phase="after", method="POST", count=1)
    with pytest.raises(httpx.RemoteProtocolError):
        await api.post(PATH, json=HOOK)
    assert (await api.get(PATH)).status_code == 200


async def test_request_log_marks_faults(env: Env) -> None:
    """The request log says which requests a fault answered."""
    account, api = await env.client()
    await env.fault(kind="error", count=1)
    await env.fault(kind="error", phase="after", method="POST", count=1)
    await api.get(PATH)
    await api.post(PATH, json=HOOK)
    await api.get(PATH)
    log = (await env.control.get("/_sandbox/requests", params={"account_id": account["id"]})).json()
    assert [(r["method"], r["status"], r["fault"]) for r in log] == [
        ("GET", 500, "error"),
        ("POST", 500, "error-after"),
        ("GET", 200, None),
    ]


# --- the rules API -----------------------------------------------------------------------------


async def test_delete_clears_faults(env: Env) -> None:
    """DELETE /_sandbox/faults clears every rule; DELETE /_sandbox/faults/{id} one."""
    _, api = await env.client()
    reply = await env.control.post(
        "/_sandbox/faults", json=[{"kind": "error"}, {"kind": "error", "status": 503}]
    )
    assert reply.status_code == 201
    first, _ = reply.json()
    assert (await env.control.delete(f"/_sandbox/faults/{first['id']}")).status_code == 204
    assert (await api.get(PATH)).status_code == 503
    assert (await env.control.delete(f"/_sandbox/faults/{first['id']}")).status_code == 404
    assert (await env.control.delete("/_sandbox/faults/x")).status_code == 404
    assert (await env.control.delete("/_sandbox/faults")).status_code == 204
    assert (await env.control.get("/_sandbox/faults")).json() == []
    assert (await api.get(PATH)).status_code == 204


@pytest.mark.parametrize(
    "rule",
    [
        {"kind": "explode"},
        {"kind": "error", "status": 200},
        {"kind": "error", "status": True},
        {"kind": "error", "colour": "red"},
        {"kind": "slow", "delay": -1},
        {"kind": "slow", "delay": "1"},
        {"kind": "error", "probability": 2},
        {"kind": "error", "count": 0},
        {"kind": "error", "account_id": "1"},
        {"kind": "error", "method": 5},
        {"kind": "error", "phase": "during"},
        {"kind": "rate_limit", "phase": "after"},
        {"kind": "revoke", "phase": "after"},
        "error",
    ],
)
async def test_bad_rules_are_422(env: Env, rule: Any) -> None:
    """A rule that cannot work is refused with 422 and a reason, never a 500."""
    reply = await env.control.post("/_sandbox/faults", json=rule)
    assert reply.status_code == 422
    assert reply.json()["detail"]
    assert (await env.control.get("/_sandbox/faults")).json() == []


async def test_faults_body_must_be_json(env: Env) -> None:
    reply = await env.control.post(
        "/_sandbox/faults", content=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert reply.status_code == 400
