"""Edges of the OAuth surface: amoCRM's uninstall hook arriving twice, credentials in URLs kept out
of the access log, and the security headers of every HTML page the service serves."""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import re
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from uvicorn.logging import AccessFormatter

from amobridge.amo._logging import TokenMaskingFilter
from amobridge.logs import configure_logging
from amobridge.storage.tables import AuditEntry, UsedHookSignature


def signed_hook(stack: Any) -> dict[str, Any]:
    """The query amoCRM sends when the integration is disabled in the account: always the same
    for one integration and account (no timestamp, no nonce)."""
    client_id = stack.integration["client_id"]
    signature = hmac.new(
        stack.integration["client_secret"].encode(),
        f"{client_id}|{stack.account['id']}".encode(),
        hashlib.sha256,
    ).hexdigest()
    return {"account_id": stack.account["id"], "client_uuid": client_id, "signature": signature}


async def status_of(stack: Any, owner: str) -> str:
    reply = await stack.http.get(
        "/amocrm/status", params={"owner": owner}, headers=stack.app_headers()
    )
    status: str = reply.json()["status"]
    return status


async def test_a_replayed_uninstall_hook_is_refused_and_changes_nothing(stack: Any) -> None:
    await stack.connect("u")
    hook = signed_hook(stack)
    first = await stack.http.get("/amocrm/uninstall", params=hook)
    assert first.status_code == 200, first.text
    assert first.json() == {"disconnected": 1, "replayed": False}
    assert await status_of(stack, "u") == "disconnected"

    # The same URL again, also with the hex in capitals: amoCRM expects a 200, nothing changes.
    for again in (hook, {**hook, "signature": hook["signature"].upper()}):
        replay = await stack.http.get("/amocrm/uninstall", params=again)
        assert replay.status_code == 200, replay.text
        assert replay.json() == {"disconnected": 0, "replayed": True}

    async with stack.services.db.read() as session:
        stored = await session.scalar(select(func.count()).select_from(UsedHookSignature))
        replays = list(
            await session.scalars(
                select(AuditEntry).where(AuditEntry.action == "uninstall.replayed")
            )
        )
    assert stored == 1
    assert len(replays) == 2
    assert all(entry.owner == "u" and entry.success is False for entry in replays)
    assert all(hook["signature"] not in (entry.message or "") for entry in replays)


async def test_after_a_reconnect_the_next_uninstall_disconnects(stack: Any) -> None:
    await stack.connect("u")
    hook = signed_hook(stack)
    assert (await stack.http.get("/amocrm/uninstall", params=hook)).json()["disconnected"] == 1

    reconnected = await stack.connect("u")
    assert reconnected.status_code == 200, reconnected.text
    assert await status_of(stack, "u") == "active"
    async with stack.services.db.read() as session:
        stored = await session.scalar(select(func.count()).select_from(UsedHookSignature))
    assert stored == 0

    # amoCRM signs the second real uninstall exactly as the first one.
    second = await stack.http.get("/amocrm/uninstall", params=hook)
    assert second.status_code == 200, second.text
    assert second.json() == {"disconnected": 1, "replayed": False}
    assert await status_of(stack, "u") == "disconnected"


async def test_a_refused_signature_is_not_remembered(stack: Any) -> None:
    await stack.connect("u")
    hook = signed_hook(stack)
    bad = await stack.http.get("/amocrm/uninstall", params={**hook, "signature": "0" * 64})
    assert bad.status_code == 401
    good = await stack.http.get("/amocrm/uninstall", params=hook)
    assert good.json() == {"disconnected": 1, "replayed": False}


# --- the access log ----------------------------------------------------------------------------

SIGNATURE = "9f2c4e1ab3d75f60c8e2a4b6d8f0a1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f5"
# One value per masked parameter, each of a shape the token patterns alone would let through
# (short, or no JWT/def502/Bearer look): the parameter's name is what marks it secret.
QUERY_SECRETS = {
    "api_key": "amb_1a2b3c4d_Qm3LkP9rT2wYb6nHs4dZx8v0",
    "token": "s3cr3t7",
    "access_token": "opaque-access-Zx8v0Qm3",
    "refresh_token": "r3fr3sh",
    "code": "c0de42",
    "signature": SIGNATURE,
    "client_secret": "Zx8v0Qm3LkP9",
    "state": "n0nce.s1gn",
}


def access_record(path: str) -> logging.LogRecord:
    """A record as uvicorn's access logger makes it (``h11_impl``/``httptools_impl``)."""
    return logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        0,
        '%s - "%s %s HTTP/%s" %d',
        ("203.0.113.7:51234", "GET", path, "1.1", 200),
        None,
    )


@pytest.mark.parametrize("name", sorted(QUERY_SECRETS))
def test_the_access_log_masks_each_secret_query_value(name: str) -> None:
    value = QUERY_SECRETS[name]
    record = access_record(f"/amocrm/connect?owner=u-1&{name}={value}&return=web")
    assert TokenMaskingFilter().filter(record) is True
    line = record.getMessage()
    assert value not in line
    assert value[: len(value) // 2 + 1] not in line  # at most a short prefix is left
    assert f"&{name}=" in line
    assert "…" in line
    assert line.startswith('203.0.113.7:51234 - "GET /amocrm/connect?owner=u-1&')
    assert line.endswith('&return=web HTTP/1.1" 200')


def test_the_uninstall_hook_line_keeps_its_shape_for_uvicorns_formatter() -> None:
    record = access_record(
        f"/amocrm/uninstall?account_id=31234567&client_uuid=5f1e&signature={SIGNATURE}"
    )
    TokenMaskingFilter().filter(record)
    # Still the five arguments uvicorn's AccessFormatter unpacks.
    assert isinstance(record.args, tuple)
    assert len(record.args) == 5
    formatted = AccessFormatter("%(client_addr)s %(request_line)s %(status_code)s").format(record)
    assert SIGNATURE not in formatted
    assert "signature=9f2c4e…" in formatted
    assert "account_id=31234567&client_uuid=5f1e" in formatted


def test_amobridge_serves_access_lines_through_the_masking_handler() -> None:
    """``amobridge serve`` runs uvicorn with ``log_config=None``: its access logger propagates to
    the root handler that ``configure_logging`` installs."""
    root = logging.getLogger()
    access = logging.getLogger("uvicorn.access")
    saved = (root.handlers[:], root.level, access.propagate)
    try:
        configure_logging("INFO")
        [handler] = root.handlers
        assert isinstance(handler, logging.StreamHandler)
        stream = io.StringIO()
        handler.setStream(stream)
        access.propagate = True
        query = "&".join(f"{name}={value}" for name, value in QUERY_SECRETS.items())
        access.info(
            '%s - "%s %s HTTP/%s" %d', "203.0.113.7:1", "GET", f"/amocrm/x?{query}", "1.1", 200
        )
        text = stream.getvalue()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        access.propagate = saved[2]
    assert "uvicorn.access" in text
    for value in QUERY_SECRETS.values():
        assert value not in text


# --- security headers on HTML pages --------------------------------------------------------------

SCRIPT_TAG = re.compile(r"<script\b([^>]*)>", re.IGNORECASE)


def assert_secured_page(reply: httpx.Response) -> str:
    """The page's headers are all there and its every script may run; returns the nonce."""
    assert reply.headers["content-type"].startswith("text/html"), reply.text
    assert reply.headers["x-frame-options"] == "DENY"
    assert reply.headers["referrer-policy"] == "no-referrer"
    assert reply.headers["x-content-type-options"] == "nosniff"
    policy = reply.headers["content-security-policy"]
    directives = {
        name: value
        for name, _, value in (part.strip().partition(" ") for part in policy.split(";"))
        if name
    }
    assert directives["frame-ancestors"] == "'none'"
    assert directives["default-src"] == "'none'"
    assert "unsafe-inline" not in directives["script-src"]
    [nonce] = re.findall(r"'nonce-([^']+)'", directives["script-src"])
    assert len(nonce) >= 16
    for attributes in SCRIPT_TAG.findall(reply.text):
        assert f'nonce="{nonce}"' in attributes, attributes
    return nonce


async def test_the_success_and_button_pages_carry_the_security_headers(stack: Any) -> None:
    success = await stack.connect("u")
    assert "amoCRM подключён!" in success.text
    first = assert_secured_page(success)
    assert "<script" in success.text  # the opener is told: the nonce lets it run

    button = await stack.http.get(
        "/amocrm/connect", params={"owner": "u"}, headers=stack.app_headers()
    )
    assert button.status_code == 200, button.text
    second = assert_secured_page(button)
    assert second != first  # one nonce per response
    # amoCRM's button script (here the sandbox's) comes from the configured origin.
    script_src = button.headers["content-security-policy"].split("script-src", 1)[1]
    assert "http://sandbox.test" in script_src.split(";", 1)[0]
    assert 'src="http://sandbox.test/auth/button.min.js"' in button.text


async def test_the_error_page_carries_the_security_headers(stack: Any) -> None:
    error = await stack.http.get(
        "/amocrm/callback", params={"error": "access_denied", "state": "forged.state"}
    )
    assert error.status_code == 400
    assert 'data-status="error"' in error.text
    assert_secured_page(error)


async def test_the_deep_link_page_carries_the_security_headers(stack: Any) -> None:
    start = await stack.http.get(
        "/amocrm/auth",
        params={
            "owner": "m",
            "return": "app",
            "redirect": "foryoure://amocrm/callback",
            "format": "json",
        },
        headers=stack.app_headers(),
    )
    assert start.status_code == 200, start.text
    consent = await stack.control.post(
        "/_sandbox/authorize",
        json={
            "client_id": stack.integration["client_id"],
            "account_id": stack.account["id"],
            "state": await stack.open_link(start.json()["url"]),
        },
    )
    redirect = httpx.URL(consent.json()["redirect_url"])
    page = await stack.http.get("/amocrm/callback", params=dict(redirect.params))
    assert page.status_code == 200, page.text
    assert "foryoure://amocrm/callback?status=success" in page.text
    assert_secured_page(page)


async def test_docs_and_json_answers(stack: Any) -> None:
    docs = await stack.http.get("/docs")
    assert docs.status_code == 200
    assert docs.headers["x-frame-options"] == "DENY"
    assert docs.headers["referrer-policy"] == "no-referrer"
    policy = docs.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy
    assert "script-src 'self' 'unsafe-inline'" in policy  # FastAPI's Swagger page, no CDN

    health = await stack.http.get("/healthz")
    assert health.headers["x-content-type-options"] == "nosniff"
    assert "content-security-policy" not in health.headers
