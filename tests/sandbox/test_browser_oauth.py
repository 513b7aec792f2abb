"""End to end in a real browser: the consent page and the website button.

Debian's headless Chromium (``/usr/bin/chromium``) is driven by Playwright; the sandbox and a tiny
integrator site (the page with the button, its redirect_uri and secrets_uri) run as real uvicorn
servers on free loopback ports, on two origins, as in production.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from amobridge.sandbox import Clock, Sandbox, SandboxConfig, create_sandbox_app
from browser_support import CHROMIUM, CHROMIUM_ARGS, WAIT_MS, require_chromium

pytestmark = pytest.mark.browser


class Server:
    """A uvicorn server on a free loopback port, in a background thread."""

    def __init__(self, app: Any) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, log_level="warning", lifespan="on", ws="none", loop="asyncio", http="h11"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def __enter__(self) -> Server:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:  # poll with a deadline: uvicorn has no "ready" event
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


def closing(app: Any, sandbox: Sandbox) -> Any:
    """The sandbox app, plus a lifespan shutdown that closes its outbound client on the server's
    own event loop (``create_sandbox_app`` handles no lifespan events)."""

    async def wrapper(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await sandbox.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    return wrapper


@dataclass
class Integrator:
    """The integrator's site: what reached its secrets_uri and redirect_uri, in order."""

    sandbox_url: str = ""
    events: list[tuple[str, float, dict[str, Any]]] = field(default_factory=list)
    landed: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, data: dict[str, Any]) -> None:
        with self.lock:
            self.events.append((kind, time.monotonic(), data))
        if kind == "callback":
            self.landed.set()

    def app(self) -> Starlette:
        async def secrets(request: Request) -> Response:
            self.record("secrets", await request.json())
            return PlainTextResponse("ok")

        async def callback(request: Request) -> Response:
            self.record("callback", dict(request.query_params))
            return HTMLResponse("<!doctype html><title>landed</title><h1 id='landed'>landed</h1>")

        async def shop(request: Request) -> Response:
            return HTMLResponse(self.shop_page(dict(request.query_params)))

        return Starlette(
            routes=[
                Route("/secrets", secrets, methods=["POST"]),
                Route("/callback", callback),
                Route("/shop", shop),
            ]
        )

    def shop_page(self, query: dict[str, str]) -> str:
        own = query.get("own", "")
        if query.get("client_id"):
            data = (
                f'data-client-id="{query["client_id"]}" data-mode="{query.get("mode", "popup")}" '
                'data-error-callback="onOauthError" data-state="btn-state"'
            )
        else:
            data = (
                'data-name="Shop sync" data-description="Orders to amoCRM" '
                f'data-redirect_uri="{own}/callback" data-secrets_uri="{own}/secrets" '
                'data-scopes="crm,notifications" data-state="btn-state" data-mode="popup"'
            )
        return f"""<!doctype html><html><head><title>shop</title></head><body>
<script>
  window.errors = [];
  window.messages = [];
  function onOauthError(event) {{ window.errors.push(event); }}
  window.addEventListener("message", function (e) {{ window.messages.push(e.data); }});
</script>
<script class="amocrm_oauth" charset="utf-8" data-title="Подключить" {data}
  src="{self.sandbox_url}/auth/button.min.js"></script>
</body></html>"""


@dataclass
class Sites:
    sandbox: Sandbox
    sandbox_url: str
    shop_url: str
    integrator: Integrator
    account: Any


@pytest.fixture(scope="module")
def sites(signing_key: rsa.RSAPrivateKey) -> Iterator[Sites]:
    require_chromium()
    sandbox = Sandbox(
        SandboxConfig(rate_limit_enabled=False), clock=Clock(), signing_key=signing_key
    )
    account = sandbox.state.create_account("acme")
    integrator = Integrator()
    with (
        Server(closing(create_sandbox_app(sandbox=sandbox), sandbox)) as box,
        Server(integrator.app()) as shop,
    ):
        integrator.sandbox_url = box.url
        yield Sites(sandbox, box.url, shop.url, integrator, account)


@pytest.fixture(scope="module")
def browser(sites: Sites) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, sites: Sites) -> Iterator[Any]:
    sites.integrator.events.clear()
    sites.integrator.landed.clear()
    # A Russian-speaking user: the consent page answers in the browser's language.
    context = browser.new_context(locale="ru-RU")
    context.set_default_timeout(WAIT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def exchange(sites: Sites, client_id: str, client_secret: str, code: str, referer: str) -> int:
    reply = httpx.post(
        f"{sites.sandbox_url}/oauth2/access_token",
        headers={"Host": referer},
        json={
            "client_id": client_id,
            "client_secret": client_secret,
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": f"{sites.shop_url}/callback",
        },
    )
    return reply.status_code


def test_consent_page_allow_and_deny(page: Any, sites: Sites) -> None:
    """Allow lands on redirect_uri with code, referer, state, platform, client_id (and the
    code exchanges); Deny lands there with error=access_denied and the state."""
    integration = sites.sandbox.state.create_integration("Shop", f"{sites.shop_url}/callback")
    consent = f"{sites.sandbox_url}/oauth?" + urlencode(
        {"client_id": integration.client_id, "state": "s-allow"}
    )
    page.goto(consent)
    assert "«Shop»" in page.inner_text("h1")
    page.click("#allow")
    page.wait_for_url(f"{sites.shop_url}/callback?**")
    query = query_of(page.url)
    assert query["state"] == "s-allow"
    assert query["referer"] == "acme.amocrm.ru"
    assert query["platform"] == "1"
    assert query["client_id"] == integration.client_id
    assert page.inner_text("#landed") == "landed"
    status = exchange(
        sites, integration.client_id, integration.client_secret, query["code"], query["referer"]
    )
    assert status == 200

    page.goto(consent.replace("s-allow", "s-deny"))
    page.click("#deny")
    page.wait_for_url(f"{sites.shop_url}/callback?**")
    assert query_of(page.url) == {"error": "access_denied", "state": "s-deny"}


def test_metadata_button_popup_posts_secrets_before_the_redirect(page: Any, sites: Sites) -> None:
    """The button opens a 750×580 consent popup; Allow creates the integration, POSTs its
    secrets to secrets_uri, and only then the main window lands on redirect_uri with the code."""
    shop = f"{sites.shop_url}/shop?" + urlencode({"own": sites.shop_url})
    page.goto(shop)
    button = page.locator("button.amocrm_oauth_button")
    assert button.inner_text() == "Подключить"
    with page.expect_popup() as popup_info:
        button.click()
    popup = popup_info.value
    popup.wait_for_load_state()
    assert popup.url.startswith(f"{sites.sandbox_url}/oauth/?")
    assert query_of(popup.url)["secrets_uri"] == f"{sites.shop_url}/secrets"
    assert popup.evaluate("window.innerWidth") <= 750
    assert "Установить интеграцию «Shop sync»" in popup.inner_text("h1")

    popup.click("#allow")
    page.wait_for_url(f"{sites.shop_url}/callback?**")
    assert sites.integrator.landed.wait(WAIT_MS / 1000)
    if not popup.is_closed():
        popup.wait_for_event("close")

    kinds = [kind for kind, _, _ in sites.integrator.events]
    assert kinds == ["secrets", "callback"]
    (_, posted_at, secrets), (_, landed_at, callback) = sites.integrator.events
    assert posted_at < landed_at
    assert secrets["state"] == "btn-state"
    assert callback["client_id"] == secrets["client_id"]
    assert callback["state"] == "btn-state"
    status = exchange(
        sites, secrets["client_id"], secrets["client_secret"], callback["code"], callback["referer"]
    )
    assert status == 200


def test_post_message_deny_calls_the_error_callback(page: Any, sites: Sites) -> None:
    """mode=post_message: the popup posts to window.opener; a refusal reaches the
    page's data-error-callback as {client_id, error}."""
    integration = sites.sandbox.state.create_integration("Shop", f"{sites.shop_url}/callback")
    page.goto(
        f"{sites.shop_url}/shop?"
        + urlencode({"client_id": integration.client_id, "mode": "post_message"})
    )
    with page.expect_popup() as popup_info:
        page.click("button.amocrm_oauth_button")
    popup = popup_info.value
    popup.wait_for_load_state()
    popup.click("#deny")
    page.wait_for_function("window.errors.length > 0")
    assert page.evaluate("window.errors") == [
        {"client_id": integration.client_id, "error": "access_denied"}
    ]
    assert page.evaluate("window.messages")[0]["error"] == "access_denied"
    assert page.url.startswith(f"{sites.shop_url}/shop")  # the main window did not navigate
