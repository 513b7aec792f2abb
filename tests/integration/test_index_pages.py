"""``/`` of the service and of the sandbox say where things are, instead of a bare 404."""

from __future__ import annotations

from typing import Any

import httpx

from amobridge.services import Services
from amobridge.web.app import create_app


async def test_the_service_index_points_at_docs_health_and_the_flows(stack: Any) -> None:
    reply = await stack.http.get("/")
    assert reply.status_code == 200
    body = reply.json()
    assert body["docs"] == "/docs"
    assert body["health"] == "/healthz"
    assert (await stack.http.get(body["ready"])).status_code == 200
    assert (await stack.http.get(body["openapi"])).status_code == 200


async def test_the_service_index_names_paths_under_the_proxy_prefix(stack: Any) -> None:
    settings = stack.settings.model_copy(
        update={"server": stack.settings.server.model_copy(update={"root_path": "/api"})}
    )
    services = Services.build(settings)
    app = create_app(settings, services=services)
    await services.start(migrate=False, workers=False)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://service.test"
        ) as http:
            body = (await http.get("/api/")).json()
    finally:
        await services.stop()
    assert body["docs"] == "/api/docs"
    assert body["health"] == "/api/healthz"


async def test_the_sandbox_index_links_its_control_api(control: httpx.AsyncClient) -> None:
    reply = await control.get("/")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/html")
    assert 'href="/_sandbox/health"' in reply.text
    assert (await control.get("/_sandbox/health")).status_code == 200
    assert (await control.get("/nothing-here")).status_code == 404


BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


async def test_a_browser_gets_the_service_index_as_a_page_in_its_language(stack: Any) -> None:
    english = await stack.http.get(
        "/", headers={"Accept": BROWSER_ACCEPT, "Accept-Language": "en-US,en;q=0.9"}
    )
    assert english.status_code == 200
    assert english.headers["content-type"].startswith("text/html")
    assert '<html lang="en">' in english.text
    assert 'href="/docs"' in english.text
    assert "the API reference" in english.text
    russian = await stack.http.get("/", headers={"Accept": BROWSER_ACCEPT})
    assert '<html lang="ru">' in russian.text
    assert "справочник по API" in russian.text
    asked = await stack.http.get(
        "/", params={"lang": "en"}, headers={"Accept": BROWSER_ACCEPT, "Accept-Language": "ru"}
    )
    assert '<html lang="en">' in asked.text
    # A program asking for JSON (or for anything) still gets JSON.
    for accept in ("application/json", "*/*", "application/json, text/html;q=0.5"):
        reply = await stack.http.get("/", headers={"Accept": accept})
        assert reply.json()["docs"] == "/docs", accept


async def test_the_sandbox_index_speaks_the_browser_language(control: httpx.AsyncClient) -> None:
    english = await control.get("/", headers={"Accept-Language": "en"})
    assert '<html lang="en">' in english.text
    assert "A local amoCRM for tests and demos" in english.text
    russian = await control.get("/", headers={"Accept-Language": "uk-UA"})
    assert '<html lang="ru">' in russian.text
    assert "Локальный amoCRM" in russian.text
