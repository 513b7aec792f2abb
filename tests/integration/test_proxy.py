"""``/proxy/{owner}/api/v4/...`` against the sandbox, on SQLite and PostgreSQL: amoCRM's answers
pass through, reads are retried, writes never sent twice, refusals say how to reconnect, owners
stay apart, path tricks never reach amoCRM, and every proxied write is audited."""

from __future__ import annotations

import asyncio
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from amobridge.amo.retry import set_testing
from amobridge.audit import AuditRepository
from amobridge.settings import ProxySettings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "proxy.md"
OWNER = "user-42"


@pytest.fixture(autouse=True)
def _no_backoff_waits() -> Iterator[None]:
    """Retries happen as in production, without their jittered waits."""
    set_testing(True)
    yield
    set_testing(False)


class Recording(httpx.AsyncBaseTransport):
    """The service's transport to amoCRM, recording what each request carried."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return await self.inner.handle_async_request(request)


async def _sandbox_log(stack: Any, **params: Any) -> list[dict[str, Any]]:
    reply = await stack.control.get("/_sandbox/requests", params=params)
    found: list[dict[str, Any]] = reply.json()
    return found


async def _fault(stack: Any, **spec: Any) -> None:
    reply = await stack.control.post("/_sandbox/faults", json=spec)
    assert reply.status_code == 201, reply.text


async def _secrets(stack: Any, owner: str) -> list[str]:
    async with stack.services.db.read() as session:
        row = await stack.services.connections(session).for_owner(owner)
    tokens = stack.services.tokens_of(row) if row is not None else None
    if tokens is None:
        return [stack.app_key, stack.admin_key]
    return [tokens.access_token, tokens.refresh_token or "", stack.app_key, stack.admin_key]


async def _assert_no_secret(stack: Any, owner: str, response: httpx.Response) -> None:
    shown = response.text + "".join(f"{k}:{v}" for k, v in response.headers.items())
    for secret in await _secrets(stack, owner):
        if secret:
            assert secret not in shown


async def _proxy(stack: Any, method: str, path: str, **kw: Any) -> httpx.Response:
    headers = {**stack.app_headers(), **kw.pop("headers", {})}
    return await stack.http.request(method, f"/proxy/{OWNER}/api/v4/{path}", headers=headers, **kw)


async def _audit(stack: Any, owner: str = OWNER) -> list[Any]:
    async with stack.services.db.read() as session:
        return await AuditRepository(session).tail(owner=owner, action="proxy")


async def _leads_named(stack: Any, name: str) -> list[dict[str, Any]]:
    reply = await _proxy(stack, "GET", "leads", params={"query": name})
    assert reply.status_code in (200, 204), reply.text
    if reply.status_code == 204:
        return []
    leads: list[dict[str, Any]] = reply.json()["_embedded"]["leads"]
    return [lead for lead in leads if lead["name"] == name]


async def _second_account(stack: Any, owner: str) -> dict[str, Any]:
    account: dict[str, Any] = (
        await stack.control.post("/_sandbox/accounts", json={"subdomain": "beta"})
    ).json()
    connected = await stack.connect(owner, account_id=account["id"])
    assert connected.status_code == 200, connected.text
    return account


# --- forwarding ----------------------------------------------------------------------------------


async def test_get_account_through_the_proxy_is_the_sandboxs_account(
    stack: Any, sandbox_app: Any
) -> None:
    await stack.connect(OWNER)
    reply = await _proxy(stack, "GET", "account", params={"with": "users"})
    assert reply.status_code == 200, reply.text
    async with stack.services.db.read() as session:
        row = await stack.services.connections(session).for_owner(OWNER)
    token = stack.services.tokens_of(row).access_token
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=sandbox_app), base_url="https://acme.amocrm.ru"
    ) as amo:
        direct = await amo.get(
            "/api/v4/account",
            params={"with": "users"},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert reply.json() == direct.json()
    assert reply.json()["id"] == stack.account["id"]
    assert reply.headers["content-type"] == direct.headers["content-type"]
    assert reply.headers["x-amobridge-attempts"] == "1"
    logged = await _sandbox_log(stack, path_prefix="/api/v4/account")
    assert logged[-2]["query"] == "with=users"  # the proxy's call, then the direct one
    await _assert_no_secret(stack, OWNER, reply)


async def test_method_query_body_and_only_the_listed_headers_reach_amocrm(stack: Any) -> None:
    await stack.connect(OWNER)
    recording = Recording(stack.services.clients.transport)
    stack.services.clients.transport = recording  # the connection's client is built on first use
    reply = await _proxy(
        stack,
        "POST",
        "leads",
        params=[("with", "contacts"), ("filter[id][]", "1")],
        json=[{"name": "Forwarded"}],
        headers={"Cookie": "session=host", "Accept": "application/hal+json"},
    )
    assert reply.status_code == 200, reply.text
    form = await _proxy(
        stack,
        "POST",
        "leads",
        data={"name": "as a form"},
        headers={"X-API-Key": stack.app_key, "Authorization": f"Bearer {stack.app_key}"},
    )
    assert form.status_code == 400  # amoCRM's own refusal of a form, passed through
    assert form.headers["content-type"].startswith("application/problem+json")
    sent_json, sent_form = recording.requests[-2:]
    assert sent_json.method == "POST"
    assert sent_json.url.host == "acme.amocrm.ru"
    assert sent_json.url.path == "/api/v4/leads"
    assert unquote(sent_json.url.query.decode()) == "with=contacts&filter[id][]=1"
    assert sent_json.content == b'[{"name":"Forwarded"}]'
    assert sent_json.headers["content-type"] == "application/json"
    assert sent_json.headers["accept"] == "application/hal+json"
    assert sent_form.content == b"name=as+a+form"
    assert sent_form.headers["content-type"] == "application/x-www-form-urlencoded"
    secrets = await _secrets(stack, OWNER)
    for sent in (sent_json, sent_form):
        assert "cookie" not in sent.headers
        assert "x-api-key" not in sent.headers
        assert sent.headers["authorization"] == f"Bearer {secrets[0]}"  # amoCRM's, not ours
    for name in ("set-cookie", "connection", "transfer-encoding"):
        assert name not in reply.headers


async def test_patch_goes_through_and_changes_the_lead(stack: Any) -> None:
    await stack.connect(OWNER)
    created = await _proxy(stack, "POST", "leads", json=[{"name": "To change"}])
    lead_id = created.json()["_embedded"]["leads"][0]["id"]
    changed = await _proxy(stack, "PATCH", f"leads/{lead_id}", json={"price": 4200})
    assert changed.status_code == 200, changed.text
    read = await _proxy(stack, "GET", f"leads/{lead_id}")
    assert read.json()["price"] == 4200


# --- retries ---------------------------------------------------------------------------------------


async def test_post_leads_creates_exactly_one_lead_when_amocrm_fails_after_creating(
    stack: Any,
) -> None:
    await stack.connect(OWNER)
    await _fault(
        stack, kind="error", status=500, phase="after", method="POST", path_prefix="/api/v4/leads"
    )
    reply = await _proxy(stack, "POST", "leads", json=[{"name": "Exactly once"}])
    assert reply.status_code == 500  # amoCRM's own answer: the caller sees the failure
    assert reply.headers["x-amobridge-attempts"] == "1"
    assert len(await _sandbox_log(stack, path_prefix="/api/v4/leads", method="POST")) == 1
    await stack.control.delete("/_sandbox/faults")
    assert len(await _leads_named(stack, "Exactly once")) == 1


async def test_a_write_whose_reply_is_lost_is_not_sent_again(stack: Any) -> None:
    await stack.connect(OWNER)
    await _fault(stack, kind="drop", phase="after", method="POST", path_prefix="/api/v4/leads")
    reply = await _proxy(stack, "POST", "leads", json=[{"name": "Lost reply"}])
    assert reply.status_code == 502, reply.text
    body = reply.json()
    assert body["error"] == "amocrm_unavailable"
    assert body["retried"] is False
    assert body["attempts"] == 1
    await stack.control.delete("/_sandbox/faults")
    assert len(await _leads_named(stack, "Lost reply")) == 1


async def test_a_get_is_retried_through_one_500(stack: Any) -> None:
    await stack.connect(OWNER)
    await _fault(
        stack, kind="error", status=500, method="GET", path_prefix="/api/v4/account", count=1
    )
    reply = await _proxy(stack, "GET", "account")
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-amobridge-attempts"] == "2"
    statuses = [r["status"] for r in await _sandbox_log(stack, path_prefix="/api/v4/account")]
    assert statuses == [500, 200]


async def test_a_get_that_keeps_failing_answers_amocrms_last_status(stack: Any) -> None:
    await stack.connect(OWNER)
    await _fault(stack, kind="error", status=502, method="GET", path_prefix="/api/v4/account")
    reply = await _proxy(stack, "GET", "account")
    assert reply.status_code == 502
    assert reply.headers["content-type"].startswith("text/html")  # amoCRM's nginx page
    assert reply.headers["x-amobridge-attempts"] == "5"


async def test_a_429_on_a_write_comes_back_with_retry_after_and_is_not_resent(stack: Any) -> None:
    await stack.connect(OWNER)
    await _fault(stack, kind="rate_limit", method="POST", path_prefix="/api/v4/leads", count=1)
    reply = await _proxy(stack, "POST", "leads", json=[{"name": "Too fast"}])
    assert reply.status_code == 429
    assert int(reply.headers["retry-after"]) >= 1
    assert len(await _sandbox_log(stack, path_prefix="/api/v4/leads", method="POST")) == 1
    assert await _leads_named(stack, "Too fast") == []


async def test_a_429_on_a_read_is_waited_out(stack: Any) -> None:
    await stack.connect(OWNER)
    await _fault(stack, kind="rate_limit", method="GET", path_prefix="/api/v4/account", count=1)
    reply = await _proxy(stack, "GET", "account")
    assert reply.status_code == 200
    assert reply.headers["x-amobridge-attempts"] == "2"


async def test_proxy_calls_and_amobridges_own_share_the_connections_pace(stack: Any) -> None:
    await stack.connect(OWNER)
    await stack.control.patch("/_sandbox/config", json={"rate_limit_enabled": True})
    before = len(await _sandbox_log(stack))
    proxied = [_proxy(stack, "GET", "account") for _ in range(10)]
    own = [
        stack.http.get(
            "/amocrm/status", params={"owner": OWNER, "verify": "true"}, headers=stack.app_headers()
        )
        for _ in range(5)
    ]
    replies = await asyncio.gather(*proxied, *own)
    assert [r.status_code for r in replies] == [200] * 15
    assert all(r.json()["verified"] for r in replies[10:])
    statuses = [r["status"] for r in (await _sandbox_log(stack))[before:]]
    assert statuses.count(200) == 15
    assert 429 not in statuses


# --- tokens ------------------------------------------------------------------------------------------


async def test_an_expired_access_token_is_refreshed_once_and_the_call_goes_through(
    stack: Any,
) -> None:
    await stack.connect(OWNER)
    await stack.control.post("/_sandbox/tokens/expire", json={})
    reply = await _proxy(stack, "POST", "leads", json=[{"name": "After refresh"}])
    assert reply.status_code == 200, reply.text
    assert len(await _leads_named(stack, "After refresh")) == 1
    grants = await _sandbox_log(stack, path_prefix="/oauth2/access_token")
    assert [g["grant_type"] for g in grants].count("refresh_token") == 1


async def test_a_revoked_grant_turns_reauth_required_and_the_next_call_is_409(stack: Any) -> None:
    await stack.connect(OWNER)
    await _second_account(stack, "user-7")
    await _fault(stack, kind="revoke", account_id=stack.account["id"], count=1)
    reply = await _proxy(stack, "GET", "account")
    assert reply.status_code == 409, reply.text
    assert reply.json()["error"] == "reauth_required"
    assert f"/amocrm/auth?owner={OWNER}" in reply.json()["detail"]
    status = await stack.http.get(
        "/amocrm/status", params={"owner": OWNER}, headers=stack.app_headers()
    )
    assert status.json()["status"] == "reauth_required"
    calls = len(await _sandbox_log(stack))
    again = await _proxy(stack, "GET", "account")
    assert (again.status_code, again.json()["error"]) == (409, "reauth_required")
    assert len(await _sandbox_log(stack)) == calls  # refused without calling amoCRM
    other = await stack.http.get("/proxy/user-7/api/v4/account", headers=stack.app_headers())
    assert other.status_code == 200  # another tenant's grant is untouched
    await _assert_no_secret(stack, OWNER, reply)


# --- refusals ----------------------------------------------------------------------------------------


async def test_refusals_say_how_to_connect(stack: Any) -> None:
    missing = await _proxy(stack, "GET", "account")
    assert missing.status_code == 404
    assert missing.json()["error"] == "connection_not_found"
    assert f"GET /amocrm/auth?owner={OWNER}" in missing.json()["detail"]

    await stack.connect(OWNER)
    gone = await stack.http.delete(
        "/amocrm/disconnect", params={"owner": OWNER}, headers=stack.app_headers()
    )
    assert gone.status_code == 200
    calls = len(await _sandbox_log(stack))
    reply = await _proxy(stack, "POST", "leads", json=[{"name": "x"}])
    assert reply.status_code == 409
    assert reply.json()["error"] == "connection_disconnected"
    assert f"GET /amocrm/auth?owner={OWNER}" in reply.json()["detail"]
    assert len(await _sandbox_log(stack)) == calls


async def test_a_body_over_the_limit_is_413(stack: Any) -> None:
    await stack.connect(OWNER)
    limit = stack.settings.server.max_body_bytes
    reply = await _proxy(
        stack,
        "POST",
        "leads",
        content=b"[" + b" " * limit + b"]",
        headers={"Content-Type": "application/json"},
    )
    assert reply.status_code == 413
    assert reply.json()["error"] == "body_too_large"
    assert await _sandbox_log(stack, path_prefix="/api/v4/leads") == []


async def test_a_ban_passes_through_then_the_breaker_keeps_calls_from_amocrm(stack: Any) -> None:
    await stack.connect(OWNER)
    await stack.control.post("/_sandbox/ban", json={"account_id": stack.account["id"]})
    first = await _proxy(stack, "GET", "leads")
    assert first.status_code == 403  # amoCRM's ban page, as it came
    assert "nginx" in first.text
    calls = len(await _sandbox_log(stack))
    second = await _proxy(stack, "POST", "leads", json=[{"name": "banned"}])
    assert second.status_code == 403
    assert second.json()["error"] == "amocrm_banned"
    assert int(second.headers["retry-after"]) > 60
    verify = await stack.http.get(
        "/amocrm/status", params={"owner": OWNER, "verify": "true"}, headers=stack.app_headers()
    )
    assert verify.json()["verified"] is False  # amobridge's own calls are held back too
    assert len(await _sandbox_log(stack)) == calls


# --- owners --------------------------------------------------------------------------------------------


async def test_owners_are_isolated(stack: Any) -> None:
    await stack.connect(OWNER)
    beta = await _second_account(stack, "user-7")
    mine = await stack.http.get(f"/proxy/{OWNER}/api/v4/account", headers=stack.app_headers())
    theirs = await stack.http.get("/proxy/user-7/api/v4/account", headers=stack.app_headers())
    assert mine.json()["id"] == stack.account["id"]
    assert theirs.json()["id"] == beta["id"]

    user = {"Authorization": f"Bearer {stack.user_token(OWNER)}"}
    own = await stack.http.get(f"/proxy/{OWNER}/api/v4/account", headers=user)
    assert own.status_code == 200
    calls = len(await _sandbox_log(stack))
    other = await stack.http.get("/proxy/user-7/api/v4/account", headers=user)
    assert (other.status_code, other.json()["error"]) == (403, "owner_mismatch")
    admin = await stack.http.get("/proxy/user-7/api/v4/account", headers=stack.admin_headers())
    assert admin.json()["id"] == beta["id"]
    anonymous = await stack.http.get(f"/proxy/{OWNER}/api/v4/account")
    assert anonymous.status_code == 401
    assert len(await _sandbox_log(stack)) == calls + 1  # the admin's call only


# --- paths -----------------------------------------------------------------------------------------------


async def _raw(stack: Any, raw_path: str, method: str = "GET") -> tuple[int, dict[str, Any]]:
    """Send ``raw_path`` as a client that does not normalise paths would (curl --path-as-is):
    httpx resolves dot segments itself, so the ASGI scope is built here."""
    headers = [(b"host", b"service.test"), (b"authorization", f"Bearer {stack.app_key}".encode())]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path),
        "raw_path": raw_path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "server": ("service.test", 80),
        "client": ("127.0.0.1", 50000),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await stack.app(scope, receive, send)
    import json

    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body)


TRAVERSALS = [
    "/proxy/user-42/api/v4/../../amocrm/status",
    "/proxy/user-42/api/v4/leads/../../../oauth2/access_token",
    "/proxy/user-42/api/v4/%2e%2e/%2e%2e/oauth2/access_token",
    "/proxy/user-42/api/v4/leads%2F..%2F..%2Foauth2%2Faccess_token",
    "/proxy/user-42/api/v4/leads%5C..%5C..%5Coauth2",
    "/proxy/user-42/api/v4//evil.example/api/v4/account",
    "/proxy/user-42/api/v4/https://evil.example/api/v4/account",
    "/proxy/user-42/api/v4/account%3Fwith=users",
    "/proxy/user-42%2Fapi%2Fv4/api/v4/account",
]
NOT_API = [
    "/proxy/user-42/oauth2/access_token",
    "/proxy/user-42/api/v3/leads",
    "/proxy/user-42/api/v4/",
    "/proxy/user-42/api/v4",
    "/proxy/user-42/ajax/leads/list",
]


async def test_path_tricks_are_refused_and_nothing_reaches_amocrm(stack: Any) -> None:
    await stack.connect(OWNER)
    calls = len(await _sandbox_log(stack))
    for raw_path in TRAVERSALS:
        for method in ("GET", "POST"):
            status, body = await _raw(stack, raw_path, method)
            assert (status, body["error"]) == (400, "invalid_proxy_path"), raw_path
    for raw_path in NOT_API:
        status, body = await _raw(stack, raw_path)
        assert (status, body["error"]) == (404, "not_an_api_path"), raw_path
    assert len(await _sandbox_log(stack)) == calls
    assert not await _audit(stack)


# --- audit -----------------------------------------------------------------------------------------------


async def test_each_proxied_write_has_one_audit_entry_without_bodies_or_tokens(stack: Any) -> None:
    await stack.connect(OWNER)
    await _proxy(stack, "GET", "account")
    created = await _proxy(
        stack, "POST", "leads", params={"secret_query": "q-value"}, json=[{"name": "Ivan Petrov"}]
    )
    lead_id = created.json()["_embedded"]["leads"][0]["id"]
    await _proxy(stack, "PATCH", f"leads/{lead_id}", json={"price": 1})
    await _fault(stack, kind="error", status=500, phase="after", method="POST", count=1)
    await _proxy(stack, "POST", "leads", json=[{"name": "Maria Ivanova"}])
    entries = list(reversed(await _audit(stack)))
    assert [(e.details["method"], e.details["path"], e.success) for e in entries] == [
        ("POST", "/api/v4/leads", True),
        ("PATCH", f"/api/v4/leads/{lead_id}", True),
        ("POST", "/api/v4/leads", False),
    ]
    assert [e.details["status"] for e in entries] == [200, 200, 500]
    assert entries[2].error == "amoCRM answered 500"
    assert all(isinstance(e.details["duration_ms"], int) for e in entries)
    assert {e.actor for e in entries} == {"host-app"}
    text = repr([(e.message, e.error, e.details) for e in entries])
    for secret in [*(await _secrets(stack, OWNER)), "Ivan Petrov", "Maria", "q-value"]:
        assert secret not in text


async def test_reads_are_audited_when_the_setting_says_so(stack: Any) -> None:
    await stack.connect(OWNER)
    await _proxy(stack, "GET", "account")
    assert await _audit(stack) == []
    stack.services.settings = stack.services.settings.model_copy(
        update={"proxy": ProxySettings(audit_reads=True)}
    )
    await _proxy(stack, "GET", "account", params={"with": "users"})
    [entry] = await _audit(stack)
    assert entry.details["path"] == "/api/v4/account"
    assert "with" not in repr(entry.details) + str(entry.message)


# --- documentation ---------------------------------------------------------------------------------------


def _curl_commands() -> list[list[str]]:
    text = DOCS.read_text(encoding="utf-8")
    block = re.search(r"```console\n(.*?)```", text, re.DOTALL)
    assert block is not None
    joined = block.group(1).replace("\\\n", " ")
    return [shlex.split(line[2:]) for line in joined.splitlines() if line.startswith("$ curl")]


async def test_the_documented_curl_commands_work(stack: Any) -> None:
    await stack.connect(OWNER)
    commands = _curl_commands()
    assert len(commands) == 2
    for argv in commands:
        method, headers, data, url = "GET", {}, None, None
        args = iter(argv[1:])
        for arg in args:
            if arg == "-s":
                continue
            if arg == "-X":
                method = next(args)
            elif arg == "-H":
                name, _, value = next(args).partition(": ")
                headers[name] = value.replace("amb_…", stack.app_key)
            elif arg == "-d":
                data = next(args)
                method = "POST" if method == "GET" else method
            else:
                url = arg
        assert url is not None
        path = httpx.URL(url).raw_path.decode()
        reply = await stack.http.request(method, path, headers=headers, content=data)
        assert reply.status_code == 200, (argv, reply.text)
        assert reply.json()
    leads = await _leads_named(stack, "Website order #1017")
    assert len(leads) == 1
