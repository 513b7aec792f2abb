"""A web connect flow sends the browser back to the host app: ``return_url`` (``redirect`` is its
older name) must lie under ``AMOBRIDGE_CONNECT__RETURN_URLS``, or the start is refused with 400 —
the service is never an open redirect. The success page links there (and goes by itself) with
``status=success&domain=…``; an error page links back with ``status=error&error=<code>``."""

from __future__ import annotations

import hashlib
import html
from typing import Any

import httpx
import pytest

from amobridge.storage.tables import OAuthState

BACK = "https://app.example.com/settings/amocrm?tab=crm"


@pytest.fixture
def allowed(stack: Any) -> Any:
    """The stack with the host app's prefixes allowed (its settings are the test's own)."""
    connect = stack.services.connect.settings.connect
    object.__setattr__(
        connect, "return_urls", ["https://app.example.com/settings", "http://localhost:3000"]
    )
    return stack


async def _start(stack: Any, **params: str) -> httpx.Response:
    return await stack.http.get(
        "/amocrm/auth", params={"owner": "owner-r", **params}, headers=stack.app_headers()
    )


async def _callback(stack: Any, state: str, **extra: str) -> httpx.Response:
    consent = await stack.control.post(
        "/_sandbox/authorize",
        json={
            "client_id": stack.integration["client_id"],
            "account_id": stack.account["id"],
            "state": state,
        },
    )
    params = {**dict(httpx.URL(consent.json()["redirect_url"]).params), **extra}
    return await stack.http.get("/amocrm/callback", params=params)


def _link(page: httpx.Response, element: str) -> httpx.URL:
    marker = f'id="{element}" href="'
    start = page.text.index(marker) + len(marker)
    return httpx.URL(html.unescape(page.text[start : page.text.index('"', start)]))


async def test_the_success_page_returns_to_the_host_app(allowed: Any) -> None:
    started = await _start(allowed, return_url=BACK)
    assert started.status_code == 302, started.text
    state = httpx.URL(started.headers["location"]).params["state"]
    async with allowed.services.db.transaction() as session:
        row = await session.get(OAuthState, hashlib.sha256(state.encode()).hexdigest())
        assert row is not None
        assert row.return_url == BACK
    page = await _callback(allowed, state)
    assert page.status_code == 200, page.text
    target = _link(page, "continue")
    assert str(target).startswith("https://app.example.com/settings/amocrm?")
    assert dict(target.params) == {"tab": "crm", "status": "success", "domain": "acme.amocrm.ru"}
    # It goes there by itself too, from a script the page's policy lets run (its nonce).
    as_json = str(target).replace("&", "\\u0026")  # as Jinja's tojson writes it
    assert f'window.location.assign("{as_json}")' in page.text


async def test_redirect_is_the_older_name_of_return_url(allowed: Any) -> None:
    started = await _start(allowed, redirect="http://localhost:3000/done")
    assert started.status_code == 302, started.text
    page = await _callback(allowed, httpx.URL(started.headers["location"]).params["state"])
    assert _link(page, "continue").path == "/done"
    both = await _start(allowed, redirect="http://localhost:3000/a", return_url=BACK)
    assert both.status_code == 400
    assert "not both" in both.json()["detail"]


async def test_an_error_page_links_back_to_try_again(allowed: Any) -> None:
    started = await _start(allowed, return_url=BACK)
    state = httpx.URL(started.headers["location"]).params["state"]
    page = await allowed.http.get(
        "/amocrm/callback", params={"error": "access_denied", "state": state}
    )
    assert page.status_code == 400
    retry = _link(page, "retry")
    assert dict(retry.params) == {"tab": "crm", "status": "error", "error": "access_denied"}
    assert 'id="continue"' not in page.text


async def test_a_used_json_link_ends_in_the_flows_language_with_a_way_back(allowed: Any) -> None:
    """The link a host backend hands out (format=json), opened a second time: the error page is
    in the language the flow started with and links back to the host app, like the callback's."""
    started = await _start(allowed, return_url=BACK, format="json", lang="en")
    link = started.json()["url"]
    assert (await allowed.http.get(link)).status_code == 302
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=allowed.app), base_url=str(allowed.http.base_url)
    ) as other:
        again = await other.get(link, headers={"Accept-Language": "ru"})
    assert again.status_code == 400
    assert 'data-error="state_link_used"' in again.text
    assert '<html lang="en"' in again.text
    retry = _link(again, "retry")
    assert dict(retry.params) == {"tab": "crm", "status": "error", "error": "state_link_used"}


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example/settings",
        "https://app.example.com/settingsX",
        "https://app.example.com/",
        "http://app.example.com/settings",
        "https://app.example.com.evil.example/settings",
        "https://app.example.com@evil.example/settings",
        "https://app.example.com/settings/../../admin",
        "//evil.example/settings",
        "javascript:alert(document.cookie)",
        "/settings",
    ],
)
async def test_any_other_url_is_refused_at_the_start(allowed: Any, url: str) -> None:
    for name in ("return_url", "redirect"):
        refused = await _start(allowed, **{name: url})
        assert refused.status_code == 400, (name, url, refused.text)
        assert refused.headers["content-type"].startswith("application/json")
        assert "return_url" in refused.json()["detail"]
        assert refused.json()["error"] == "return_url_not_allowed"
        assert "set-cookie" not in refused.headers  # no flow was started
        button = await allowed.http.get(
            "/amocrm/connect",
            params={"owner": "owner-r", name: url},
            headers=allowed.app_headers(),
        )
        assert button.status_code == 400, (name, url)
        assert "detail" in button.json()


async def test_without_allowed_prefixes_every_return_url_is_refused(stack: Any) -> None:
    refused = await _start(stack, return_url=BACK)
    assert refused.status_code == 400
    assert "AMOBRIDGE_CONNECT__RETURN_URLS" in refused.json()["detail"]
    plain = await _start(stack)  # without one, nothing changes
    assert plain.status_code == 302


async def test_a_mobile_flow_takes_no_return_url(allowed: Any) -> None:
    refused = await _start(allowed, **{"return": "app", "return_url": BACK})
    assert refused.status_code == 400
    assert "return=web" in refused.json()["detail"]


async def test_the_button_page_keeps_its_return_url(allowed: Any) -> None:
    page = await allowed.http.get(
        "/amocrm/connect",
        params={"owner": "owner-b", "return_url": BACK},
        headers=allowed.app_headers(),
    )
    assert page.status_code == 200, page.text
    marker = 'data-state="'
    start = page.text.index(marker) + len(marker)
    state = page.text[start : page.text.index('"', start)]
    done = await allowed.http.get("/amocrm/callback", params=await allowed.install_button(state))
    assert done.status_code == 200, done.text
    assert dict(_link(done, "continue").params)["status"] == "success"
