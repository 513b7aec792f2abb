"""The connect flows against the in-process sandbox: redirect, callback errors, status,
isolation, exchange-code, token import, disconnect and amoCRM's uninstall hook."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import httpx
from sqlalchemy import update

from amobridge.storage.tables import OAuthState


async def test_redirect_flow_connects_the_owner(stack: Any) -> None:
    reply = await stack.connect("user-1")
    assert reply.status_code == 200
    assert "amoCRM подключён!" in reply.text
    assert "acme.amocrm.ru" in reply.text
    status = await stack.http.get(
        "/amocrm/status", params={"owner": "user-1"}, headers=stack.app_headers()
    )
    body = status.json()
    assert body["connected"] is True
    assert body["hasTokens"] is True
    assert body["domain"] == "acme.amocrm.ru"
    assert body["accountId"] == stack.account["id"]
    assert body["status"] == "active"
    assert "token" not in status.text.lower().replace("hastokens", "")


async def test_auth_redirects_to_amocrm_with_state(stack: Any) -> None:
    reply = await stack.http.get("/amocrm/auth", params={"owner": "u"}, headers=stack.app_headers())
    assert reply.status_code == 302
    target = httpx.URL(reply.headers["location"])
    assert str(target).startswith("http://sandbox.test/oauth")
    assert target.params["client_id"] == stack.integration["client_id"]
    assert "." in target.params["state"]


async def test_auth_needs_credentials_and_owner(stack: Any) -> None:
    assert (await stack.http.get("/amocrm/auth", params={"owner": "u"})).status_code == 401
    missing = await stack.http.get("/amocrm/auth", headers=stack.app_headers())
    assert missing.status_code == 400
    assert "owner" in missing.json()["detail"]
    in_url = await stack.http.get("/amocrm/auth", params={"owner": "u", "token": stack.app_key})
    assert in_url.status_code == 401
    assert "must not be sent in URLs" in in_url.json()["detail"]


async def test_user_jwt_in_url_starts_flow_for_its_own_owner(stack: Any) -> None:
    token = stack.user_token("user-7")
    ok = await stack.http.get("/amocrm/auth", params={"token": token})
    assert ok.status_code == 302
    other = await stack.http.get("/amocrm/auth", params={"token": token, "owner": "user-8"})
    assert other.status_code == 403


async def test_denied_consent_shows_what_to_do(stack: Any) -> None:
    start = await stack.http.get(
        "/amocrm/auth", params={"owner": "u", "format": "json"}, headers=stack.app_headers()
    )
    state = await stack.open_link(start.json()["url"])
    reply = await stack.http.get(
        "/amocrm/callback", params={"error": "access_denied", "state": state}
    )
    assert reply.status_code == 400
    assert 'data-error="access_denied"' in reply.text
    assert "нажмите «Разрешить»" in reply.text  # no Accept-Language: Russian


async def test_a_reload_shows_the_connection_and_a_replay_elsewhere_is_refused(
    stack: Any,
) -> None:
    """The browser that connected may reload the success page (it shows the connection again);
    the same callback URL from another browser is refused — and the code is exchanged once."""
    start = await stack.http.get(
        "/amocrm/auth", params={"owner": "u", "format": "json"}, headers=stack.app_headers()
    )
    state = await stack.open_link(start.json()["url"])
    consent = await stack.control.post(
        "/_sandbox/authorize",
        json={
            "client_id": stack.integration["client_id"],
            "account_id": stack.account["id"],
            "state": state,
        },
    )
    params = dict(httpx.URL(consent.json()["redirect_url"]).params)
    first = await stack.http.get("/amocrm/callback", params=params)
    assert first.status_code == 200
    again = await stack.http.get("/amocrm/callback", params=params)  # a reload
    assert again.status_code == 200, again.text
    assert 'data-status="success"' in again.text
    assert "acme.amocrm.ru" in again.text
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=stack.app), base_url=str(stack.http.base_url)
    ) as elsewhere:
        replayed = await elsewhere.get("/amocrm/callback", params=params)
    assert replayed.status_code == 400
    assert 'data-error="state_used"' in replayed.text
    exchanges = (
        await stack.control.get(
            "/_sandbox/requests", params={"path_prefix": "/oauth2/access_token"}
        )
    ).json()
    assert len(exchanges) == 1


async def test_expired_state(stack: Any) -> None:
    start = await stack.http.get(
        "/amocrm/auth", params={"owner": "u", "format": "json"}, headers=stack.app_headers()
    )
    state = await stack.open_link(start.json()["url"])
    from datetime import UTC, datetime, timedelta

    async with stack.services.db.transaction() as session:
        await session.execute(
            update(OAuthState).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    reply = await stack.http.get(
        "/amocrm/callback", params={"code": "x", "state": state, "referer": "acme.amocrm.ru"}
    )
    assert reply.status_code == 400
    assert 'data-error="state_expired"' in reply.text
    assert "10 минут" in reply.text


async def test_forged_and_missing_state(stack: Any) -> None:
    forged = await stack.http.get("/amocrm/callback", params={"code": "x", "state": "abc.def"})
    assert 'data-error="state_forged"' in forged.text
    missing = await stack.http.get("/amocrm/callback", params={"code": "x"})
    assert 'data-error="state_missing"' in missing.text


async def test_redirect_uri_mismatch_is_explained(stack: Any, database_url: str) -> None:
    await stack.control.post(
        "/_sandbox/integrations",
        json={"name": "other", "redirect_uri": "https://elsewhere.example/cb"},
    )
    svc = stack.services.connect
    object.__setattr__(svc.settings.amo, "redirect_uri", "https://wrong.example/cb")
    reply = await stack.connect("u")
    assert reply.status_code == 400
    assert 'data-error="exchange_failed"' in reply.text
    assert "Redirect URI is not associated with client" in reply.text


async def test_mobile_flow_opens_allowed_deep_link(stack: Any) -> None:
    start = await stack.http.get(
        "/amocrm/auth",
        params={
            "owner": "m",
            "return": "app",
            "redirect": "foryoure://amo-crm/callback",
            "format": "json",
        },
        headers=stack.app_headers(),
    )
    state = await stack.open_link(start.json()["url"])
    consent = await stack.control.post(
        "/_sandbox/authorize",
        json={
            "client_id": stack.integration["client_id"],
            "account_id": stack.account["id"],
            "state": state,
        },
    )
    page = await stack.http.get(
        "/amocrm/callback", params=dict(httpx.URL(consent.json()["redirect_url"]).params)
    )
    assert page.status_code == 200
    assert "foryoure://amo-crm/callback?status=success&amp;domain=acme.amocrm.ru" in page.text
    assert 'id="open-app"' in page.text


async def test_mobile_scheme_not_allowed(stack: Any) -> None:
    for bad in ("javascript:alert(1)", "https://evil.example/", "evil://x"):
        reply = await stack.http.get(
            "/amocrm/auth",
            params={"owner": "m", "return": "app", "redirect": bad},
            headers=stack.app_headers(),
        )
        assert reply.status_code == 400
        assert "not allowed" in reply.json()["detail"]


async def test_owner_isolation(stack: Any) -> None:
    await stack.connect("alice")
    bob = stack.user_token("bob")
    seen = await stack.http.get("/amocrm/status", headers={"Authorization": f"Bearer {bob}"})
    assert seen.json()["connected"] is False
    peek = await stack.http.get(
        "/amocrm/status", params={"owner": "alice"}, headers={"Authorization": f"Bearer {bob}"}
    )
    assert peek.status_code == 403
    gone = await stack.http.delete(
        "/amocrm/disconnect", params={"owner": "alice"}, headers={"Authorization": f"Bearer {bob}"}
    )
    assert gone.status_code == 403
    alice = await stack.http.get(
        "/amocrm/status", headers={"Authorization": f"Bearer {stack.user_token('alice')}"}
    )
    assert alice.json()["connected"] is True


async def test_exchange_code_with_user_jwt(stack: Any) -> None:
    consent = await stack.control.post(
        "/_sandbox/authorize",
        json={"client_id": stack.integration["client_id"], "account_id": stack.account["id"]},
    )
    body = consent.json()
    headers = {"Authorization": f"Bearer {stack.user_token('mobile-user')}"}
    reply = await stack.http.post(
        "/amocrm/exchange-code",
        json={"code": body["code"], "referer": body["referer"]},
        headers=headers,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["connected"] is True
    reused = await stack.http.post(
        "/amocrm/exchange-code",
        json={"code": body["code"], "referer": body["referer"]},
        headers=headers,
    )
    assert reused.status_code == 400
    assert "Authorization code has been revoked" in reused.json()["detail"]


async def test_import_long_lived_token_admin_only(stack: Any) -> None:
    token = (
        await stack.control.post(
            "/_sandbox/long-lived-tokens",
            json={
                "client_id": stack.integration["client_id"],
                "account_id": stack.account["id"],
                "ttl_seconds": 86400 * 30,
            },
        )
    ).json()["access_token"]
    body = {"owner": "dev", "domain": "acme", "access_token": token}
    denied = await stack.http.post("/amocrm/tokens", json=body, headers=stack.app_headers())
    assert denied.status_code == 403
    reply = await stack.http.post("/amocrm/tokens", json=body, headers=stack.admin_headers())
    assert reply.status_code == 201, reply.text
    assert reply.json()["longLived"] is True
    assert token not in reply.text
    async with stack.services.db.transaction() as session:
        row = await stack.services.connections(session).for_owner("dev")
    client = await stack.services.clients.client(row)
    account = await client.account.get()
    assert account.id == stack.account["id"]


async def test_disconnect_then_status(stack: Any) -> None:
    await stack.connect("u")
    reply = await stack.http.delete(
        "/amocrm/disconnect", params={"owner": "u"}, headers=stack.app_headers()
    )
    assert reply.status_code == 200
    assert reply.json()["status"] == "disconnected"
    assert reply.json()["hasTokens"] is False
    again = await stack.http.delete(
        "/amocrm/disconnect", params={"owner": "nobody"}, headers=stack.app_headers()
    )
    assert again.status_code == 404


async def test_uninstall_hook_from_the_sandbox(stack: Any) -> None:
    await stack.connect("u")
    result = await stack.control.post(
        f"/_sandbox/integrations/{stack.integration['client_id']}/uninstall",
        json={"account_id": stack.account["id"]},
    )
    assert result.status_code == 200, result.text
    status = await stack.http.get(
        "/amocrm/status", params={"owner": "u"}, headers=stack.app_headers()
    )
    assert status.json()["status"] == "disconnected"


async def test_uninstall_with_bad_signature_changes_nothing(stack: Any) -> None:
    await stack.connect("u")
    client_id = stack.integration["client_id"]
    good = hmac.new(
        stack.integration["client_secret"].encode(),
        f"{client_id}|{stack.account['id']}".encode(),
        hashlib.sha256,
    ).hexdigest()
    bad = await stack.http.get(
        "/amocrm/uninstall",
        params={"account_id": stack.account["id"], "client_uuid": client_id, "signature": "0" * 64},
    )
    assert bad.status_code == 401
    status = await stack.http.get(
        "/amocrm/status", params={"owner": "u"}, headers=stack.app_headers()
    )
    assert status.json()["status"] == "active"
    ok = await stack.http.get(
        "/amocrm/uninstall",
        params={"account_id": stack.account["id"], "client_uuid": client_id, "signature": good},
    )
    assert ok.status_code == 200
    assert ok.json()["disconnected"] == 1


async def test_refresh_on_expiry_persists_rotated_pair(stack: Any) -> None:
    await stack.connect("u")
    async with stack.services.db.transaction() as session:
        row = await stack.services.connections(session).for_owner("u")
        before = stack.services.tokens_of(row)
    await stack.control.post("/_sandbox/tokens/expire", json={})
    client = await stack.services.clients.client(row)
    account = await client.account.get()
    assert account.id == stack.account["id"]
    async with stack.services.db.transaction() as session:
        row = await stack.services.connections(session).for_owner("u")
        after = stack.services.tokens_of(row)
    assert after.refresh_token != before.refresh_token
    refreshes = [
        r
        for r in (
            await stack.control.get("/_sandbox/requests", params={"path_prefix": "/oauth2"})
        ).json()
        if r["grant_type"] == "refresh_token"
    ]
    assert len(refreshes) == 1


async def test_revoked_grant_marks_reauth_required_and_audits(stack: Any) -> None:
    await stack.connect("u")
    await stack.connect("v")
    async with stack.services.db.transaction() as session:
        row = await stack.services.connections(session).for_owner("u")
    # amoCRM revokes u's grant (its refresh token is spent elsewhere): expire and revoke it.
    tokens = stack.services.tokens_of(row)
    stack.sandbox.state.refresh_tokens[tokens.refresh_token].revoked = True
    await stack.control.post("/_sandbox/tokens/expire", json={})
    client = await stack.services.clients.client(row)
    from amobridge.amo.errors import AmoReauthRequired

    try:
        await client.account.get()
    except AmoReauthRequired:
        pass
    else:
        raise AssertionError("expected AmoReauthRequired")
    status = await stack.http.get(
        "/amocrm/status", params={"owner": "u"}, headers=stack.app_headers()
    )
    assert status.json()["status"] == "reauth_required"
    assert status.json()["lastError"]
    other = await stack.http.get(
        "/amocrm/status", params={"owner": "v"}, headers=stack.app_headers()
    )
    assert other.json()["status"] == "active"
    from amobridge.audit import AuditRepository

    async with stack.services.db.transaction() as session:
        entries = await AuditRepository(session).tail(owner="u", action="reauth_required")
    assert entries
    assert "/amocrm/auth" in (entries[0].message or "")
