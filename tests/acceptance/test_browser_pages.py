"""The browser-facing pages in real headless Chromium, against ``amobridge serve`` and
``amobridge sandbox``:

- reloading the success page still says the account is connected (and a replay of the same
  callback URL in another browser connects nothing and exchanges nothing);
- a flow started with ``return_url`` ends back in the host app, ``status=success&domain=…``
  added, by itself after a few seconds;
- every page fits a 390 px wide phone screen in both languages: no horizontal scroll on the
  success, error, button, index and consent pages, each in the browser's language.

Screenshots go to ``tests/acceptance/artifacts/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest
from acceptance_support import (
    ServiceProcess,
    query_of,
    run_sandbox,
    run_service,
    screenshot,
)

from browser_support import WAIT_MS, require_chromium
from process_support import SandboxServer, free_port

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}
LOCALES = {"ru": "ru-RU", "en": "en-US"}
CONNECTED = {"ru": "amoCRM подключён!", "en": "amoCRM is connected!"}


@dataclass
class Stack:
    box: SandboxServer
    service: ServiceProcess

    def auth_url(self, owner: str, **params: str) -> str:
        query = urlencode({"token": self.service.user_token(owner), **params})
        return f"{self.service.url}/amocrm/auth?{query}"

    def connect_url(self, owner: str, **params: str) -> str:
        query = urlencode({"token": self.service.user_token(owner), **params})
        return f"{self.service.url}/amocrm/connect?{query}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_chromium()
    root = tmp_path_factory.mktemp("browser-pages")
    port = free_port()
    # The host app, for these tests, is the service's own index page.
    host_app = f"http://127.0.0.1:{port}/"
    with (
        run_sandbox(root / "sandbox") as box,
        run_service(box, root / "service", port=port, CONNECT__RETURN_URLS=host_app) as service,
    ):
        yield Stack(box, service)


def _context(browser: Any, lang: str, **options: Any) -> Any:
    context = browser.new_context(locale=LOCALES[lang], **options)
    context.set_default_timeout(WAIT_MS)
    return context


def _phone(browser: Any, lang: str) -> Any:
    return _context(browser, lang, viewport=PHONE, is_mobile=True, has_touch=True)


def _consent(page: Any, stack: Stack) -> None:
    page.wait_for_url(f"{stack.box.url}/oauth**")
    page.wait_for_selector("#allow")


def test_reloading_the_success_page_still_shows_connected(browser: Any, stack: Stack) -> None:
    owner = "reload-owner"
    context = _context(browser, "en")
    try:
        page = context.new_page()
        page.goto(stack.auth_url(owner))
        _consent(page, stack)
        page.click("#allow")
        page.wait_for_url(f"{stack.service.url}/amocrm/callback?**")
        callback_url = page.url
        assert page.inner_text("#result") == CONNECTED["en"]
        exchanges = len(stack.box.token_exchanges())

        page.reload()
        assert page.locator("#result").get_attribute("data-status") == "success"
        assert page.inner_text("#result") == CONNECTED["en"]
        assert "acme.amocrm.ru" in page.inner_text("main")
        screenshot(page, "success-reloaded-en")
        assert len(stack.box.token_exchanges()) == exchanges  # nothing exchanged again
        assert stack.service.status(owner)["connected"] is True
    finally:
        context.close()

    # Someone else replaying the same callback URL gets no connection of theirs.
    other = _context(browser, "en")
    try:
        page = other.new_page()
        page.goto(callback_url)
        assert page.locator("#result").get_attribute("data-error") == "state_used"
        screenshot(page, "replay-elsewhere-en")
    finally:
        other.close()
    assert len(stack.box.token_exchanges()) == exchanges


def test_the_flow_returns_to_the_host_app(browser: Any, stack: Stack) -> None:
    owner = "return-owner"
    back = f"{stack.service.url}/?from=amobridge"
    context = _context(browser, "ru")
    try:
        page = context.new_page()
        page.goto(stack.auth_url(owner, return_url=back))
        _consent(page, stack)
        page.click("#allow")
        page.wait_for_url(f"{stack.service.url}/amocrm/callback?**")
        assert page.inner_text("#result") == CONNECTED["ru"]
        assert page.inner_text("#continue") == "Продолжить"
        # No click: the page goes back by itself after a few seconds.
        page.wait_for_url(f"{stack.service.url}/?**", timeout=WAIT_MS)
        assert query_of(page.url) == {
            "from": "amobridge",
            "status": "success",
            "domain": "acme.amocrm.ru",
        }
        assert page.locator("html").get_attribute("lang") == "ru"
        screenshot(page, "returned-to-host-app-ru")
    finally:
        context.close()
    assert stack.service.status(owner)["connected"] is True


def _fits(page: Any, lang: str, name: str) -> None:
    """The page is in ``lang`` and has no horizontal scroll on the phone; a screenshot."""
    page.wait_for_load_state()
    assert page.locator("html").get_attribute("lang") == lang, page.url
    width = page.evaluate("document.documentElement.scrollWidth")
    screenshot(page, f"phone-{name}-{lang}")
    assert width <= PHONE["width"], f"{name} ({lang}) scrolls sideways: {width}px"


@pytest.mark.parametrize("lang", ["ru", "en"])
def test_every_page_fits_a_phone_screen(browser: Any, stack: Stack, lang: str) -> None:
    context = _phone(browser, lang)
    try:
        page = context.new_page()
        # The service's and the sandbox's index pages.
        page.goto(f"{stack.service.url}/")
        _fits(page, lang, "service-index")
        page.goto(f"{stack.box.url}/")
        _fits(page, lang, "sandbox-index")

        # The redirect flow: the sandbox's consent page, then the success page with its way
        # back to the host app (screenshotted before it goes there).
        page.goto(stack.auth_url(f"phone-{lang}", return_url=f"{stack.service.url}/"))
        _consent(page, stack)
        _fits(page, lang, "sandbox-consent")
        page.click("#allow")
        page.wait_for_url(f"{stack.service.url}/amocrm/callback?**")
        assert page.inner_text("#result") == CONNECTED[lang]
        _fits(page, lang, "success")

        # Deny: the error page, with its way back to try again.
        page.goto(stack.auth_url(f"phone-{lang}-deny", return_url=f"{stack.service.url}/"))
        _consent(page, stack)
        page.click("#deny")
        page.wait_for_url(f"{stack.service.url}/amocrm/callback?**")
        assert page.locator("#result").get_attribute("data-error") == "access_denied"
        assert page.locator("#retry").is_visible()
        _fits(page, lang, "error")

        # amoCRM refusing with a long word of its own: the error page wraps it.
        page.goto(stack.auth_url(f"phone-{lang}-refused"))
        _consent(page, stack)
        state = query_of(page.url)["state"]
        refusal = "invalid_request:the_redirect_uri_" + "x" * 80 + "_is_not_associated"
        page.goto(
            f"{stack.service.url}/amocrm/callback?" + urlencode({"state": state, "error": refusal})
        )
        assert page.locator("#result").get_attribute("data-error") == "exchange_failed"
        assert refusal in page.inner_text("#detail")
        _fits(page, lang, "error-long-detail")

        # A consent page for an integration whose name is one long word.
        long_name = "amobridge-" + "integration" * 6
        made = stack.box.create_integration(f"{stack.service.url}/amocrm/callback", name=long_name)
        page.goto(f"{stack.box.url}/oauth?" + urlencode({"client_id": made["client_id"]}))
        assert long_name in page.inner_text("h1")
        _fits(page, lang, "sandbox-consent-long-name")

        # The website-button page, with amoCRM's button drawn.
        page.goto(stack.connect_url(f"phone-{lang}-button"))
        page.wait_for_selector("button.amocrm_oauth_button")
        _fits(page, lang, "button")
    finally:
        context.close()
