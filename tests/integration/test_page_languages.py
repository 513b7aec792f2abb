"""Every page a browser sees speaks one language, chosen per request: ``?lang=`` first, then what
the flow kept when it started, then ``Accept-Language``, Russian when in doubt. A scan of the
rendered pages of both languages fails on a Cyrillic letter in an English page or a Latin word
in a Russian one (proper names such as amoCRM, domains, codes and paths allowed)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from amobridge.connect.pages import outcome_page
from amobridge.connect.problems import PROBLEMS, CallbackOutcome

ENGLISH = {"Accept-Language": "en-US,en;q=0.9"}
RUSSIAN = {"Accept-Language": "ru-RU,ru;q=0.9,en;q=0.5"}
HEADERS = {"en": ENGLISH, "ru": RUSSIAN}
# Words a Russian page may hold in Latin letters: proper names and the names of protocols.
NAMES = {"amoCRM", "amobridge", "OAuth", "API", "OpenAPI", "JSON", "HTTP"}


class _Visible(HTMLParser):
    """The text a person sees: text outside scripts, styles and code (a command, a table of
    raw parameters), and the button's label."""

    HIDDEN = frozenset({"script", "style", "code", "pre", "table"})

    def __init__(self) -> None:
        super().__init__()
        self.lang: str | None = None
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "html":
            self.lang = values.get("lang")
        for shown in ("data-title", "alt", "title", "placeholder"):
            if values.get(shown):
                self.parts.append(values[shown] or "")
        if tag in self.HIDDEN:
            self._hidden += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN:
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def visible(html: str) -> tuple[str | None, str]:
    parser = _Visible()
    parser.feed(html)
    return parser.lang, " ".join(" ".join(parser.parts).split())


def latin_words(text: str) -> list[str]:
    """Latin words that are neither a name nor a code, domain, path or abbreviation."""
    found = []
    for word in text.split():
        token = word.strip("«»()[]\"',.;:!?—…")
        if not re.search(r"[A-Za-z]", token) or token in NAMES or token.isupper():
            continue
        if re.search(r"[_./:@0-9]", token):
            continue
        found.append(token)
    return found


def assert_one_language(html: str, lang: str, *, data: tuple[str, ...] = ()) -> None:
    """``html`` is entirely in ``lang``; ``data`` are values the page shows as given (an
    account's name, an integration's description)."""
    declared, text = visible(html)
    assert declared == lang, (declared, text[:200])
    for value in data:
        text = text.replace(value, " ")
    if lang == "en":
        cyrillic = re.findall(r"\S*[\u0400-\u04ff]\S*", text)
        assert not cyrillic, f"Cyrillic on an English page: {cyrillic} in {text!r}"
    else:
        latin = latin_words(text)
        assert not latin, f"Latin words on a Russian page: {latin} in {text!r}"


def _request(lang: str, query: bytes = b"") -> Request:
    return Request(
        {
            "type": "http",
            "method": "GET",
            "scheme": "http",
            "server": ("service.test", 80),
            "path": "/amocrm/callback",
            "root_path": "",
            "query_string": query,
            "headers": [(b"accept-language", HEADERS[lang]["Accept-Language"].encode())],
            "state": {"csp_nonce": "test-nonce"},
        }
    )


async def _consent(stack: Any, state: str) -> dict[str, str]:
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


async def _start(stack: Any, owner: str, headers: dict[str, str], **params: str) -> str:
    started = await stack.http.get(
        "/amocrm/auth",
        params={"owner": owner, **params},
        headers={**stack.app_headers(), **headers},
    )
    assert started.status_code == 302, started.text
    return httpx.URL(started.headers["location"]).params["state"]


# --- which language --------------------------------------------------------------------------


async def test_the_callback_page_follows_the_browser(stack: Any) -> None:
    for lang, title in (("en", "amoCRM is connected!"), ("ru", "amoCRM подключён!")):
        state = await _start(stack, f"owner-{lang}", {})
        page = await stack.http.get(
            "/amocrm/callback", params=await _consent(stack, state), headers=HEADERS[lang]
        )
        assert page.status_code == 200, page.text
        assert title in page.text
        assert f'<html lang="{lang}">' in page.text
        assert "Accept-Language" in page.headers["vary"]
    state = await _start(stack, "owner-none", {})
    page = await stack.http.get("/amocrm/callback", params=await _consent(stack, state))
    assert '<html lang="ru">' in page.text  # nothing said: Russian


async def test_the_language_the_flow_started_with_carries_to_the_callback(stack: Any) -> None:
    """amoCRM sends the browser back without our query: the start's choice is kept."""
    asked = await _start(stack, "owner-q", {}, lang="en")
    page = await stack.http.get(
        "/amocrm/callback", params=await _consent(stack, asked), headers=RUSSIAN
    )
    assert '<html lang="en">' in page.text
    assert "amoCRM is connected!" in page.text

    browser = await _start(stack, "owner-b", ENGLISH)  # the start's Accept-Language
    page = await stack.http.get("/amocrm/callback", params=await _consent(stack, browser))
    assert '<html lang="en">' in page.text

    # ?lang= on the page itself still wins.
    asked = await _start(stack, "owner-r", {}, lang="en")
    params = {**(await _consent(stack, asked)), "lang": "ru"}
    page = await stack.http.get("/amocrm/callback", params=params)
    assert '<html lang="ru">' in page.text


async def test_a_json_link_keeps_the_language_the_backend_asked_for(stack: Any) -> None:
    start = await stack.http.get(
        "/amocrm/auth",
        params={"owner": "owner-j", "format": "json", "lang": "en"},
        headers=stack.app_headers(),
    )
    state = await stack.open_link(start.json()["url"])
    denied = await stack.http.get(
        "/amocrm/callback", params={"error": "access_denied", "state": state}, headers=RUSSIAN
    )
    assert denied.status_code == 400
    assert '<html lang="en">' in denied.text
    assert "press «Allow»" in denied.text


async def test_an_unknown_lang_is_refused_at_the_start(stack: Any) -> None:
    reply = await stack.http.get(
        "/amocrm/auth", params={"owner": "u", "lang": "de"}, headers=stack.app_headers()
    )
    assert reply.status_code == 422


async def test_the_button_page_speaks_the_browser_language(stack: Any) -> None:
    for lang, label in (("en", 'data-title="Connect amoCRM"'), ("ru", 'data-title="Подключить')):
        page = await stack.http.get(
            "/amocrm/connect",
            params={"owner": "owner-b"},
            headers={**stack.app_headers(), **HEADERS[lang]},
        )
        assert page.status_code == 200, page.text
        assert label in page.text
        assert_one_language(page.text, lang)
    forced = await stack.http.get(
        "/amocrm/connect",
        params={"owner": "owner-b", "lang": "en"},
        headers={**stack.app_headers(), **RUSSIAN},
    )
    assert '<html lang="en">' in forced.text


# --- the scan --------------------------------------------------------------------------------


@pytest.mark.parametrize("lang", ["ru", "en"])
async def test_every_outcome_page_is_in_one_language(lang: str) -> None:
    """Each problem's error page (with amoCRM's own words and a way back to the host app), the
    success page with and without a return URL, and the deep-link pages."""
    back = "https://app.example.com/settings"
    outcomes = [
        CallbackOutcome(True, "connected", host="acme.amocrm.ru", account_id=1),
        CallbackOutcome(True, "connected", host="acme.amocrm.ru", return_url=back),
        CallbackOutcome(
            True,
            "connected",
            host="acme.amocrm.ru",
            account_id=1,
            return_to="app",
            app_redirect="foryoure://amocrm/callback",
        ),
        CallbackOutcome(False, "state_used", return_to="app", app_redirect="foryoure://cb"),
    ]
    outcomes += [
        CallbackOutcome(False, code, detail="Redirect URI is not associated with client")
        for code in PROBLEMS
    ]
    outcomes += [CallbackOutcome(False, code, return_url=back) for code in PROBLEMS]
    for outcome in outcomes:
        page = outcome_page(_request(lang), outcome)
        html = bytes(page.body).decode()
        assert_one_language(html, lang)
        if outcome.return_url and outcome.ok:
            assert 'id="continue"' in html
        elif outcome.return_url:
            assert 'id="retry"' in html


@pytest.mark.parametrize("lang", ["ru", "en"])
async def test_every_page_of_the_flows_is_in_one_language(stack: Any, lang: str) -> None:
    headers = HEADERS[lang]
    shown: list[httpx.Response] = []
    state = await _start(stack, f"scan-{lang}", headers)
    shown.append(
        await stack.http.get(
            "/amocrm/callback", params=await _consent(stack, state), headers=headers
        )
    )
    shown.append(
        await stack.http.get("/amocrm/callback", params={"state": "abc.def"}, headers=headers)
    )
    shown.append(await stack.http.get("/amocrm/callback", headers=headers))
    shown.append(
        await stack.http.get(
            "/amocrm/connect",
            params={"owner": f"scan-{lang}"},
            headers={**stack.app_headers(), **headers},
        )
    )
    shown.append(
        await stack.http.get(
            "/amocrm/auth/continue", params={"state": "abc.def", "handle": "x"}, headers=headers
        )
    )
    shown.append(await stack.http.get("/", headers={"Accept": "text/html", **headers}))
    for page in shown:
        assert page.headers["content-type"].startswith("text/html"), page.text
        assert_one_language(page.text, lang)


@pytest.mark.parametrize("lang", ["ru", "en"])
async def test_every_sandbox_page_is_in_one_language(stack: Any, lang: str) -> None:
    """The sandbox's consent pages (an integration's, a website button's), what answers them,
    its error pages, its index and its demo landing page."""
    headers = HEADERS[lang]
    control = stack.control
    client_id = stack.integration["client_id"]
    data = ("acme",)  # the account's name, as the sandbox was given it
    shown: list[httpx.Response] = [await control.get("/", headers=headers)]
    consent = await control.get(
        "/oauth", params={"client_id": client_id, "state": "s", "mode": "popup"}, headers=headers
    )
    shown.append(consent)
    nonce = re.search(r'name="nonce" value="([^"]+)"', consent.text)
    assert nonce is not None
    # The answer speaks the page's language even when the form's request says nothing.
    shown.append(
        await control.post(
            "/oauth",
            data={"nonce": nonce.group(1), "decision": "allow", "account_id": stack.account["id"]},
        )
    )
    button = {
        "name": "amobridge",
        "redirect_uri": "http://service.test/amocrm/callback",
        "secrets_uri": "http://service.test/amocrm/secrets",
        "scopes": "crm,notifications",
    }
    shown.append(await control.get("/oauth/", params=button, headers=headers))
    shown.append(await control.get("/oauth", headers=headers))
    shown.append(await control.get("/oauth", params={"client_id": "nope"}, headers=headers))
    shown.append(await control.post("/oauth", data={"nonce": "stale"}, headers=headers))
    shown.append(
        await control.get(
            "/_sandbox/demo/callback",
            params={"code": "c0de", "referer": "acme.amocrm.ru", "client_id": client_id},
            headers=headers,
        )
    )
    shown.append(await control.get("/_sandbox/demo/callback", headers=headers))
    for page in shown:
        assert page.headers["content-type"].startswith("text/html"), page.text
        assert_one_language(page.text, lang, data=data)
