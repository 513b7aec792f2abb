"""Edges of the OAuth surface: amoCRM's uninstall hook arriving twice, credentials in URLs kept out
of the access log, and the security headers of every HTML page the service serves."""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
from typing import Any

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
