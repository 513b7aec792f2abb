"""A connect flow ends only in the browser that started it (RFC 6749 §10.12): whoever holds an
owner's consent link cannot finish it with an amoCRM account of their own."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select, update

from amobridge.connect.stores import binding_cookie_name
from amobridge.services import Services
from amobridge.storage.tables import AuditEntry, OAuthState
from amobridge.web.app import create_app

SERVICE_URL = "http://service.test"  # the stack's public URL (tests/integration/conftest.py)


@asynccontextmanager
async def _browser(app: Any, base_url: str = SERVICE_URL) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url) as c:
        yield c


async def _consent(stack: Any, state: str) -> dict[str, str]:
    """The owner presses «Allow»: the callback's query amoCRM sends the browser back with."""
    consent = await stack.control.post(
        "/_sandbox/authorize",
        json={
            "client_id": stack.integration["client_id"],
            "account_id": stack.account["id"],
            "state": state,
        },
    )
    assert consent.status_code == 200, consent.text
    return dict(httpx.URL(consent.json()["redirect_url"]).params)


async def _state_row(stack: Any, state: str) -> OAuthState:
    async with stack.services.db.transaction() as session:
        row = await session.get(
            OAuthState, hashlib.sha256(state.encode()).hexdigest(), populate_existing=True
        )
    assert row is not None
    return row


def _set_cookie(reply: httpx.Response, state: str) -> str:
    name = binding_cookie_name(state)
    found = [h for h in reply.headers.get_list("set-cookie") if h.startswith(name + "=")]
    assert len(found) == 1, reply.headers.get_list("set-cookie")
    return found[0]


def _assert_binding_cookie(header: str, path: str = "/amocrm/callback") -> None:
    attributes = {part.strip().split("=")[0].lower(): part.strip() for part in header.split(";")}
    assert "httponly" in attributes
    assert attributes["samesite"].lower() == "samesite=lax"
    assert attributes["path"] == f"Path={path}"
    assert attributes["max-age"] == "Max-Age=600"
    assert "secure" not in attributes  # the public URL is http here


async def _start(stack: Any, owner: str) -> tuple[str, httpx.Response]:
    reply = await stack.http.get(
        "/amocrm/auth", params={"owner": owner}, headers=stack.app_headers()
    )
    assert reply.status_code == 302, reply.text
    return httpx.URL(reply.headers["location"]).params["state"], reply


async def test_the_starting_browser_completes_and_keeps_its_cookie_for_a_reload(
    stack: Any,
) -> None:
    state, started = await _start(stack, "owner-a")
    _assert_binding_cookie(_set_cookie(started, state))
    token = stack.http.cookies.get(binding_cookie_name(state))
    assert token
    callback = await _consent(stack, state)
    done = await stack.http.get("/amocrm/callback", params=callback)
    assert done.status_code == 200, done.text
    assert "amoCRM подключён!" in done.text
    # Set again for one more lifetime (the state's row is kept as long): a reload of the
    # success page is this browser coming back with it.
    _assert_binding_cookie(_set_cookie(done, state))
    assert stack.http.cookies.get(binding_cookie_name(state)) == token
    row = await _state_row(stack, state)
    assert row.used_at is not None
    assert row.succeeded_at is not None
    reload = await stack.http.get("/amocrm/callback", params=callback)
    assert reload.status_code == 200, reload.text
    assert "amoCRM подключён!" in reload.text


async def test_a_failed_callback_clears_the_cookie_and_a_reload_is_refused(stack: Any) -> None:
    state, _ = await _start(stack, "owner-f")
    denied = await stack.http.get(
        "/amocrm/callback", params={"error": "access_denied", "state": state}
    )
    assert 'data-error="access_denied"' in denied.text
    cleared = _set_cookie(denied, state)
    assert "Max-Age=0" in cleared or "expires=" in cleared.lower()
    assert not stack.http.cookies.get(binding_cookie_name(state))
    assert (await _state_row(stack, state)).succeeded_at is None
    again = await stack.http.get(
        "/amocrm/callback", params={"error": "access_denied", "state": state}
    )
    assert 'data-error="state_used"' in again.text


async def test_a_reload_after_the_window_or_a_disconnect_is_refused(stack: Any) -> None:
    """The success page shows again only within the state's window, and only while the
    account is still connected; otherwise the reload says the link was used."""
    state, _ = await _start(stack, "owner-w")
    callback = await _consent(stack, state)
    assert (await stack.http.get("/amocrm/callback", params=callback)).status_code == 200
    gone = await stack.http.delete(
        "/amocrm/disconnect", params={"owner": "owner-w"}, headers=stack.app_headers()
    )
    assert gone.status_code == 200
    after_disconnect = await stack.http.get("/amocrm/callback", params=callback)
    assert 'data-error="state_used"' in after_disconnect.text

    state, _ = await _start(stack, "owner-x")
    callback = await _consent(stack, state)
    assert (await stack.http.get("/amocrm/callback", params=callback)).status_code == 200
    async with stack.services.db.transaction() as session:
        await session.execute(
            update(OAuthState)
            .where(OAuthState.id == hashlib.sha256(state.encode()).hexdigest())
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    late = await stack.http.get("/amocrm/callback", params=callback)
    assert 'data-error="state_used"' in late.text


async def test_another_browser_is_refused_and_the_state_stays_usable(stack: Any) -> None:
    state, _ = await _start(stack, "owner-a")
    callback = await _consent(stack, state)
    async with _browser(stack.app) as other:
        refused = await other.get("/amocrm/callback", params=callback)
        # A cookie of the right name but another value does not pass either.
        other.cookies.set(binding_cookie_name(state), "guessed", path="/amocrm/callback")
        guessed = await other.get("/amocrm/callback", params=callback)
    for reply in (refused, guessed):
        assert reply.status_code == 400
        assert 'data-error="state_wrong_browser"' in reply.text
        assert "в том браузере, где вы его начали" in reply.text
    assert (await _state_row(stack, state)).used_at is None
    async with stack.services.db.transaction() as session:
        errors = list(
            await session.scalars(select(AuditEntry.error).where(AuditEntry.owner == "owner-a"))
        )
    assert any(e and e.startswith("state_wrong_browser") for e in errors), errors
    status = await stack.http.get(
        "/amocrm/status", params={"owner": "owner-a"}, headers=stack.app_headers()
    )
    assert status.json()["connected"] is False
    # The browser that started it still finishes, with the same callback URL.
    done = await stack.http.get("/amocrm/callback", params=callback)
    assert done.status_code == 200, done.text
    assert (await _state_row(stack, state)).used_at is not None


async def test_the_json_link_passes_through_the_service_and_binds_the_first_browser(
    stack: Any,
) -> None:
    start = await stack.http.get(
        "/amocrm/auth", params={"owner": "owner-j", "format": "json"}, headers=stack.app_headers()
    )
    assert start.status_code == 200
    body = start.json()
    assert set(body) == {"url", "expires_in"}
    link = httpx.URL(body["url"])
    assert str(link).startswith(f"{SERVICE_URL}/amocrm/auth/continue?")
    state = link.params["state"]
    # Consent given without opening the link (only the state is known): refused.
    callback = await _consent(stack, state)
    skipped = await stack.http.get("/amocrm/callback", params=callback)
    assert 'data-error="state_wrong_browser"' in skipped.text
    # The state with a handle of one's own: refused, and the real link still works.
    altered = await stack.http.get(
        "/amocrm/auth/continue", params={"state": state, "handle": "guessed"}
    )
    assert 'data-error="state_forged"' in altered.text

    hop = await stack.http.get(body["url"])
    assert hop.status_code == 302
    assert hop.headers["location"].startswith("http://sandbox.test/oauth?")
    assert httpx.URL(hop.headers["location"]).params["state"] == state
    _assert_binding_cookie(_set_cookie(hop, state))
    async with _browser(stack.app) as other:
        late = await other.get(body["url"])  # the link's handle works once
        assert late.status_code == 400
        assert 'data-error="state_link_used"' in late.text
        refused = await other.get("/amocrm/callback", params=callback)
        assert 'data-error="state_wrong_browser"' in refused.text
    done = await stack.http.get("/amocrm/callback", params=callback)
    assert done.status_code == 200, done.text


async def test_the_mobile_json_link_works_the_same_way(stack: Any) -> None:
    start = await stack.http.get(
        "/amocrm/auth",
        params={"owner": "owner-m", "return": "app", "format": "json"},
        headers=stack.app_headers(),
    )
    state = await stack.open_link(start.json()["url"])
    callback = await _consent(stack, state)
    async with _browser(stack.app) as other:
        refused = await other.get("/amocrm/callback", params=callback)
    assert refused.status_code == 400
    assert "status=error" in refused.text
    assert "state_wrong_browser" in refused.text
    done = await stack.http.get("/amocrm/callback", params=callback)
    assert done.status_code == 200
    assert "foryoure://amocrm/callback?status=success" in done.text


async def test_the_button_page_binds_the_browser(stack: Any) -> None:
    page = await stack.http.get(
        "/amocrm/connect", params={"owner": "owner-b"}, headers=stack.app_headers()
    )
    assert page.status_code == 200
    marker = 'data-state="'
    start = page.text.index(marker) + len(marker)
    state = page.text[start : page.text.index('"', start)]
    _assert_binding_cookie(_set_cookie(page, state))
    callback = await stack.install_button(state)
    async with _browser(stack.app) as other:
        refused = await other.get("/amocrm/callback", params=callback)
    assert 'data-error="state_wrong_browser"' in refused.text
    assert (await _state_row(stack, state)).used_at is None
    done = await stack.http.get("/amocrm/callback", params=callback)
    assert done.status_code == 200, done.text


async def test_a_state_bound_to_no_browser_works_as_before(stack: Any) -> None:
    async with stack.services.db.transaction() as session:
        url = await stack.services.connect.start(session, "owner-old")
    state = httpx.URL(url).params["state"]
    assert (await _state_row(stack, state)).browser_binding is None
    async with _browser(stack.app) as anyone:
        done = await anyone.get("/amocrm/callback", params=await _consent(stack, state))
    assert done.status_code == 200, done.text


async def test_behind_a_proxy_prefix_the_cookie_is_scoped_to_the_prefixed_callback(
    stack: Any, sandbox_app: Any
) -> None:
    server = stack.settings.server.model_copy(
        update={"root_path": "/api", "public_url": f"{SERVICE_URL}/api"}
    )
    # amoCRM still knows the integration's redirect URI as it was registered.
    amo = stack.settings.amo.model_copy(update={"redirect_uri": f"{SERVICE_URL}/amocrm/callback"})
    settings = stack.settings.model_copy(update={"server": server, "amo": amo})
    services = Services.build(settings, amo_transport=httpx.ASGITransport(app=sandbox_app))
    app = create_app(settings, services=services)
    await services.start(migrate=False, workers=False)
    try:
        async with _browser(app) as browser, _browser(app) as other:
            start = await browser.get(
                "/api/amocrm/auth",
                params={"owner": "owner-p", "format": "json"},
                headers=stack.app_headers(),
            )
            link = start.json()["url"]
            assert link.startswith(f"{SERVICE_URL}/api/amocrm/auth/continue?")
            hop = await browser.get(link)
            assert hop.status_code == 302, hop.text
            state = httpx.URL(hop.headers["location"]).params["state"]
            _assert_binding_cookie(_set_cookie(hop, state), path="/api/amocrm/callback")
            callback = await _consent(stack, state)
            refused = await other.get("/api/amocrm/callback", params=callback)
            assert 'data-error="state_wrong_browser"' in refused.text
            done = await browser.get("/api/amocrm/callback", params=callback)
            assert done.status_code == 200, done.text
            assert "Path=/api/amocrm/callback" in _set_cookie(done, state)
    finally:
        await services.stop()
