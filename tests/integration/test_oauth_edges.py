"""Edges of the OAuth surface: amoCRM's uninstall hook arriving twice, and the security headers of
every HTML page the service serves."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from sqlalchemy import func, select

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
