"""``GET /amocrm/status?verify=true``: one amoCRM call proves the connection, on SQLite and
PostgreSQL; without ``verify`` the status makes no amoCRM call at all."""

from __future__ import annotations

from typing import Any


async def _account_calls(stack: Any) -> int:
    log = await stack.control.get("/_sandbox/requests", params={"path_prefix": "/api/v4/account"})
    return len(log.json())


async def _status(stack: Any, owner: str, **params: str) -> Any:
    reply = await stack.http.get(
        "/amocrm/status", params={"owner": owner, **params}, headers=stack.app_headers()
    )
    assert reply.status_code == 200, reply.text
    return reply


async def test_verify_makes_one_amocrm_call_and_says_verified(stack: Any) -> None:
    await stack.connect("u")
    before = await _account_calls(stack)
    plain = (await _status(stack, "u")).json()
    assert "verified" not in plain
    assert await _account_calls(stack) == before  # no verify, no amoCRM call

    body = (await _status(stack, "u", verify="true")).json()
    assert body["verified"] is True
    assert "verifyError" not in body
    assert body["connected"] is True
    assert body["status"] == "active"
    assert await _account_calls(stack) == before + 1


async def test_verify_after_amocrm_revoked_the_grant_marks_reauth_required(stack: Any) -> None:
    await stack.connect("u")
    await stack.connect("v")
    async with stack.services.db.transaction() as session:
        row = await stack.services.connections(session).for_owner("u")
    tokens = stack.services.tokens_of(row)
    # amoCRM revokes u's grant and its access token runs out.
    stack.sandbox.state.refresh_tokens[tokens.refresh_token].revoked = True
    await stack.control.post("/_sandbox/tokens/expire", json={})
    # Without verify the answer is still the stored one: "connected", nothing asked of amoCRM.
    assert (await _status(stack, "u")).json()["connected"] is True

    reply = await _status(stack, "u", verify="true")
    body = reply.json()
    assert body["verified"] is False
    assert "grant" in body["verifyError"]
    assert body["connected"] is False
    assert body["status"] == "reauth_required"
    for secret in (tokens.access_token, tokens.refresh_token):
        assert secret not in reply.text
    # The normal path ran: the plain status says so too, and the other owner is untouched.
    assert (await _status(stack, "u")).json()["status"] == "reauth_required"
    assert (await _status(stack, "v")).json()["status"] == "active"
    from amobridge.audit import AuditRepository

    async with stack.services.db.transaction() as session:
        entries = await AuditRepository(session).tail(owner="u", action="reauth_required")
    assert entries


async def test_verify_without_a_connection_makes_no_call(stack: Any) -> None:
    before = await _account_calls(stack)
    body = (await _status(stack, "nobody", verify="true")).json()
    assert body["verified"] is False
    assert body["verifyError"]
    assert body["status"] == "not_connected"
    assert await _account_calls(stack) == before
