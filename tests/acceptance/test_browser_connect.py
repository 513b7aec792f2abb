"""The browser proof: every connect flow in real headless Chromium, against the real
``amobridge serve`` and ``amobridge sandbox`` processes (two origins, as in production).

- redirect: ``/amocrm/auth?token=<user JWT>`` → amoCRM's consent page → Allow → the service's
  callback says "amoCRM is connected!" (the browser speaks English) and ``/amocrm/status`` says
  connected;
- deny: Deny → the error page says what happened and what to do;
- website button: ``/amocrm/connect`` → the button → consent popup → Allow → amoCRM POSTs the new
  integration's keys to the service first → success, connected with the button's integration;
- mobile: ``return=app`` ends on a page that opens ``foryoure://…?status=success&…`` with a
  visible fallback link;
- expired state: a consent answered after the state's 10 minutes → "state_expired".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest
from acceptance_support import (
    APP_SCHEME,
    ServiceProcess,
    query_of,
    run_sandbox,
    run_service,
)

from browser_support import require_chromium
from process_support import SandboxServer as SandboxProcess

pytestmark = pytest.mark.browser

# Records every navigation a page asks for, including ones to custom schemes that a desktop
# browser cannot open (the Navigation API's `navigate` event fires before the attempt).
RECORD_NAVIGATIONS = """
window.__navigations = [];
if (window.navigation) {
  navigation.addEventListener("navigate", function (event) {
    window.__navigations.push(event.destination.url);
  });
}
"""


@dataclass
class Stack:
    box: SandboxProcess
    service: ServiceProcess

    def auth_url(self, owner: str, **params: str) -> str:
        query = urlencode({"token": self.service.user_token(owner), **params})
        return f"{self.service.url}/amocrm/auth?{query}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_chromium()
    root = tmp_path_factory.mktemp("browser-connect")
    with run_sandbox(root / "sandbox") as box, run_service(box, root / "service") as service:
        yield Stack(box, service)


def consent(page: Any, stack: Stack) -> dict[str, str]:
    """Wait for the sandbox's consent page; its query (client_id, state, mode)."""
    page.wait_for_url(f"{stack.box.url}/oauth?**")
    assert "«amobridge acceptance»" in page.inner_text("h1")
    return query_of(page.url)


def test_redirect_flow_connects_the_owner(page: Any, stack: Stack) -> None:
    owner = "browser-redirect"
    token = stack.service.user_token(owner)
    assert stack.service.status(owner)["connected"] is False
    page.goto(stack.auth_url(owner))
    asked = consent(page, stack)
    assert asked["client_id"] == stack.service.integration["client_id"]

    page.click("#allow")
    page.wait_for_url(f"{stack.service.url}/amocrm/callback?**")
    code = query_of(page.url)["code"]
    assert page.inner_text("#result") == "amoCRM is connected!"
    assert "acme.amocrm.ru" in page.inner_text("main")

    status = stack.service.status(owner)
    assert status["connected"] is True
    assert status["status"] == "active"
    assert status["domain"] == "acme.amocrm.ru"
    exchanged = stack.box.token_exchanges()[-1]
    assert (exchanged["client_id"], exchanged["status"]) == (asked["client_id"], 200)
    # The service's log has an access line for each leg, yet never the user's JWT, the
    # authorization code (both travelled in URLs) or the integration's secret.
    log = stack.service.process.log()
    assert '"GET /amocrm/auth?token=' in log
    assert '"GET /amocrm/callback?code=' in log
    for secret in (token, code, stack.service.integration["client_secret"]):
        assert secret not in log


def test_deny_shows_what_to_do(page: Any, stack: Stack) -> None:
    owner = "browser-deny"
    page.goto(stack.auth_url(owner))
    consent(page, stack)
    page.click("#deny")
    page.wait_for_url(f"{stack.service.url}/amocrm/callback?**")
    assert query_of(page.url)["error"] == "access_denied"
    result = page.locator("#result")
    assert result.get_attribute("data-error") == "access_denied"
    text = page.inner_text("main")
    assert "You pressed «Deny»" in text
    assert "What to do:" in text
    assert "press «Allow»" in text
    assert stack.service.status(owner)["connected"] is False


def test_website_button_connects_with_its_own_integration(page: Any, stack: Stack) -> None:
    owner = "browser-button"
    query = urlencode({"token": stack.service.user_token(owner)})
    page.goto(f"{stack.service.url}/amocrm/connect?{query}")
    tag = page.locator("script.amocrm_oauth")
    state = tag.get_attribute("data-state")
    assert tag.get_attribute("data-secrets_uri") == f"{stack.service.url}/amocrm/secrets"
    button = page.locator("button.amocrm_oauth_button")
    with page.expect_popup() as opened:
        button.click()
    popup = opened.value
    popup.wait_for_load_state()
    assert popup.url.startswith(f"{stack.box.url}/oauth/?")
    assert "Install the integration «amobridge»" in popup.inner_text("h1")

    popup.click("#allow")
    page.wait_for_url(f"{stack.service.url}/amocrm/callback?**")
    assert page.inner_text("#result") == "amoCRM is connected!"
    landed = query_of(page.url)
    assert landed["state"] == state

    # amoCRM created an integration for this install and POSTed its keys to the service
    # (answered 200) before sending the browser to the callback; the code was then exchanged
    # with those keys, not the configured integration's.
    posted = [e for e in stack.box.outbound("secrets") if e["state"] == state]
    assert len(posted) == 1
    assert posted[0]["url"] == f"{stack.service.url}/amocrm/secrets"
    assert posted[0]["status"] == 200
    made = posted[0]["client_id"]
    assert made == landed["client_id"]
    assert made != stack.service.integration["client_id"]
    exchanged = stack.box.token_exchanges()[-1]
    assert (exchanged["client_id"], exchanged["status"]) == (made, 200)
    status = stack.service.status(owner)
    assert status["connected"] is True
    assert status["domain"] == "acme.amocrm.ru"


def test_mobile_flow_opens_the_app_deep_link(page: Any, stack: Stack) -> None:
    owner = "browser-mobile"
    app_redirect = f"{APP_SCHEME}://amo-crm/callback"
    page.context.add_init_script(RECORD_NAVIGATIONS)
    page.goto(stack.auth_url(owner, **{"return": "app", "redirect": app_redirect}))
    consent(page, stack)
    page.click("#allow")
    # The deep-link page never finishes loading in a desktop browser (nothing handles the
    # scheme), so wait for the response to commit, then for the page's navigation attempt.
    page.wait_for_url(f"{stack.service.url}/amocrm/callback?**", wait_until="commit")
    page.wait_for_function("window.__navigations && window.__navigations.length > 0")
    attempted = page.evaluate("window.__navigations")[0]
    assert attempted.startswith(f"{app_redirect}?")
    assert query_of(attempted) == {
        "status": "success",
        "domain": "acme.amocrm.ru",
        "account_id": str(stack.box.control.get("/_sandbox/accounts").json()[0]["id"]),
    }
    assert page.locator("#result").get_attribute("data-status") == "success"
    fallback = page.locator("#open-app")
    assert fallback.is_visible()
    assert fallback.get_attribute("href") == attempted
    assert stack.service.status(owner)["connected"] is True


def test_expired_state_is_explained(page: Any, stack: Stack) -> None:
    owner = "browser-expired"
    page.goto(stack.auth_url(owner))
    asked = consent(page, stack)
    exchanges = len(stack.box.token_exchanges())
    stack.service.expire_state(asked["state"])  # the consent page was left open too long

    page.click("#allow")
    page.wait_for_url(f"{stack.service.url}/amocrm/callback?**")
    assert page.locator("#result").get_attribute("data-error") == "state_expired"
    text = page.inner_text("main")
    assert "valid for 10 minutes" in text
    assert "Start the connection again" in text
    assert len(stack.box.token_exchanges()) == exchanges  # the code was never exchanged
    assert stack.service.status(owner)["connected"] is False
