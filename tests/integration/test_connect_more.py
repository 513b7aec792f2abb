"""More connect flows: RS256 user tokens, the secrets webhook's refusals, purging, keep-alive
refresh, the signed re-authorization callback, and the production key rule."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import func, select, update

from amobridge.errors import ConfigurationError
from amobridge.services import Services, build_keyring
from amobridge.settings import Settings
from amobridge.storage.tables import ButtonSecret, Connection, OAuthState
from amobridge.web.app import create_app


async def _button_state(stack: Any, owner: str = "u") -> str:
    page = await stack.http.get(
        "/amocrm/connect", params={"owner": owner}, headers=stack.app_headers()
    )
    assert page.status_code == 200
    marker = 'data-state="'
    start = page.text.index(marker) + len(marker)
    return page.text[start : page.text.index('"', start)]


async def _secret_rows(stack: Any) -> int:
    async with stack.services.db.transaction() as session:
        return int(await session.scalar(select(func.count()).select_from(ButtonSecret)) or 0)


async def test_connect_page_renders_the_button(stack: Any) -> None:
    page = await stack.http.get(
        "/amocrm/connect", params={"owner": "u"}, headers=stack.app_headers()
    )
    assert 'class="amocrm_oauth"' in page.text
    assert 'data-secrets_uri="http://service.test/amocrm/secrets"' in page.text
    assert 'data-redirect_uri="http://service.test/amocrm/callback"' in page.text
    assert 'src="http://sandbox.test/auth/button.min.js"' in page.text


async def test_secrets_webhook_refuses_unknown_and_redirect_states(stack: Any) -> None:
    unknown = await stack.http.post(
        "/amocrm/secrets", json={"client_id": "c", "client_secret": "s", "state": "abc.def"}
    )
    assert unknown.status_code == 403
    start = await stack.http.get(
        "/amocrm/auth", params={"owner": "u", "format": "json"}, headers=stack.app_headers()
    )
    redirect_state = httpx.URL(start.json()["url"]).params["state"]
    wrong_flow = await stack.http.post(
        "/amocrm/secrets", json={"client_id": "c", "client_secret": "s", "state": redirect_state}
    )
    assert wrong_flow.status_code == 403
    missing = await stack.http.post("/amocrm/secrets", json={"client_id": "c"})
    assert missing.status_code == 400
    garbage = await stack.http.post(
        "/amocrm/secrets", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert garbage.status_code == 400
    assert "detail" in garbage.json()
    assert await _secret_rows(stack) == 0


async def test_secrets_webhook_accepts_form_once_and_exactly_200(stack: Any) -> None:
    state = await _button_state(stack)
    body = {"client_id": "cid-1", "client_secret": "sec-1", "state": state}
    first = await stack.http.post("/amocrm/secrets", data=body)
    assert first.status_code == 200
    again = await stack.http.post("/amocrm/secrets", json=body)
    assert again.status_code == 409
    assert await _secret_rows(stack) == 1


async def test_expired_secrets_are_not_used_and_are_purged(stack: Any) -> None:
    state = await _button_state(stack)
    await stack.http.post(
        "/amocrm/secrets", json={"client_id": "c", "client_secret": "s", "state": state}
    )
    past = datetime.now(UTC) - timedelta(seconds=1)
    async with stack.services.db.transaction() as session:
        await session.execute(update(ButtonSecret).values(expires_at=past))
        await session.execute(update(OAuthState).values(expires_at=past))
    states, secrets = await stack.services.connect_tasks.purge_expired()
    assert secrets == 1
    assert states >= 1
    assert await _secret_rows(stack) == 0


async def test_button_flow_end_to_end_in_process(stack: Any) -> None:
    """The sandbox's button install POSTs secrets to the service before the redirect."""
    state = await _button_state(stack, "buttoned")
    install = await stack.control.post(
        "/_sandbox/button-install",
        json={
            "account_id": stack.account["id"],
            "name": "amobridge",
            "redirect_uri": "http://service.test/amocrm/callback",
            "secrets_uri": "http://service.test/amocrm/secrets",
            "state": state,
            "scopes": ["crm", "notifications"],
        },
    )
    assert install.status_code == 201, install.text
    callback = await stack.http.get(
        "/amocrm/callback", params=dict(httpx.URL(install.json()["redirect_url"]).params)
    )
    assert callback.status_code == 200, callback.text
    status = await stack.http.get(
        "/amocrm/status", params={"owner": "buttoned"}, headers=stack.app_headers()
    )
    assert status.json()["connected"] is True
    assert await _secret_rows(stack) == 0  # used once, then deleted


async def test_keepalive_refreshes_idle_connections(stack: Any) -> None:
    await stack.connect("idle")
    async with stack.services.db.transaction() as session:
        await session.execute(
            update(Connection).values(last_refresh_at=datetime.now(UTC) - timedelta(days=40))
        )
    report = await stack.services.connect_tasks.keepalive(older_than=timedelta(days=30))
    assert report.refreshed == 1
    status = await stack.http.get(
        "/amocrm/status", params={"owner": "idle"}, headers=stack.app_headers()
    )
    last = datetime.fromisoformat(status.json()["lastRefreshAt"])
    assert datetime.now(UTC) - last < timedelta(minutes=1)
    assert (
        await stack.services.connect_tasks.keepalive(older_than=timedelta(days=30))
    ).refreshed == 0


def test_production_refuses_to_start_without_keys(tmp_path: Any) -> None:
    settings = Settings(environment="production", database={"url": f"sqlite:///{tmp_path}/x.db"})
    with pytest.raises(ConfigurationError, match="SECRET_KEYS is required in production"):
        build_keyring(settings)


def test_development_key_is_kept_and_warned(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(database={"url": f"sqlite:///{tmp_path}/x.db"})
    first = build_keyring(settings).encrypt("hello")
    assert "development key" in caplog.text
    assert build_keyring(settings).decrypt(first) == "hello"  # survives a restart


async def test_rs256_user_tokens(database_url: str, sandbox_app: Any) -> None:
    from conftest import make_settings  # type: ignore[import-not-found]

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    settings = make_settings(
        database_url,
        security={"jwt_algorithm": "RS256", "jwt_public_key": public, "jwt_audience": "my-app"},
    )
    services = Services.build(settings, amo_transport=httpx.ASGITransport(app=sandbox_app))
    app = create_app(settings, services=services)
    await services.start()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://service.test"
        ) as http:
            good = jwt.encode(
                {"sub": "42", "aud": "my-app", "exp": int(time.time()) + 60}, key, algorithm="RS256"
            )
            ok = await http.get("/amocrm/status", headers={"Authorization": f"Bearer {good}"})
            assert ok.status_code == 200
            assert ok.json()["connected"] is False
            wrong_aud = jwt.encode(
                {"sub": "42", "aud": "other", "exp": int(time.time()) + 60}, key, algorithm="RS256"
            )
            bad = await http.get("/amocrm/status", headers={"Authorization": f"Bearer {wrong_aud}"})
            assert bad.status_code == 401
            expired = jwt.encode(
                {"sub": "42", "aud": "my-app", "exp": int(time.time()) - 10}, key, algorithm="RS256"
            )
            old = await http.get("/amocrm/status", headers={"Authorization": f"Bearer {expired}"})
            assert old.status_code == 401
            assert "expired" in old.json()["detail"]
    finally:
        await services.stop()
