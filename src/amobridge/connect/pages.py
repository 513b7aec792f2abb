"""The HTML pages of the connect flows (and the service's index page), each in one language.

The language is chosen per request (:func:`amobridge.i18n.choose_language`): ``?lang=``, then the
choice the flow kept when it started (the callback comes back from amoCRM without our query),
then the browser's ``Accept-Language``, else Russian. Every text comes from the catalogue in
:mod:`amobridge.i18n`, the problem texts from :mod:`amobridge.connect.problems`.

A ``return=web`` flow started with a ``return_url`` ends by sending the browser back there:
the success page has a «Continue» button and goes on by itself after
:data:`AUTO_RETURN_SECONDS`, with ``status=success&domain=…`` added; an error page links back
with ``status=error&error=<code>`` («Try again»).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from fastapi import Query, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from amobridge import __version__
from amobridge.connect.problems import CallbackOutcome, problem_texts
from amobridge.i18n import Lang, Texts, choose_language, preferred_language

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))

AUTO_RETURN_SECONDS = 5
"""How long the success page stays before it sends the browser back to the host app."""

LangQuery = Annotated[
    Lang | None,
    Query(
        description="The pages' language, ru or en (otherwise the browser's Accept-Language "
        "decides, and Russian when it does not); kept for the page the flow ends on."
    ),
]
ReturnUrlQuery = Annotated[
    str | None,
    Query(
        max_length=2048,
        description="return=web: where the success page sends the browser back to, with "
        "status=success&domain=… added (an error page links back with status=error&error=…). "
        "Must start with one of AMOBRIDGE_CONNECT__RETURN_URLS; `redirect` is its older name.",
    ),
]


def page_language(request: Request, stored: str | None = None) -> Lang:
    """The language of the page answering ``request``; ``stored``: the flow's own choice."""
    return choose_language(
        request.query_params.get("lang"), request.headers.get("accept-language"), stored=stored
    )


def start_language(request: Request, lang: str | None) -> Lang | None:
    """What a flow keeps for its last page: the language its start asked for, if it asked."""
    return preferred_language(lang, request.headers.get("accept-language"))


def render(
    request: Request,
    template: str,
    lang: Lang,
    context: dict[str, Any],
    *,
    status_code: int = 200,
) -> HTMLResponse:
    """``template`` in ``lang``: the context gets ``lang`` and ``t`` (the catalogue's texts)."""
    response = templates.TemplateResponse(
        request,
        template,
        {**context, "lang": lang, "t": Texts(lang)},
        status_code=status_code,
    )
    # The same URL answers in another language to another browser.
    response.headers["Vary"] = "Accept-Language"
    return response


def with_query(url: str, params: dict[str, str]) -> str:
    """``url`` with ``params`` added to its query (replacing ones of the same name), before
    any fragment."""
    parts = urlsplit(url)
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    return urlunsplit(parts._replace(query=urlencode([*kept, *params.items()])))


def outcome_page(request: Request, outcome: CallbackOutcome) -> Response:
    """The page a connect flow ends on: a mobile app's deep-link page, the success page or the
    error page (400)."""
    lang = page_language(request, stored=outcome.lang)
    if outcome.return_to == "app" and outcome.app_redirect:
        query: dict[str, Any] = {"status": "success" if outcome.ok else "error"}
        if outcome.ok:
            query.update({"domain": outcome.host, "account_id": outcome.account_id})
        else:
            query["error"] = outcome.code
        sep = "&" if "?" in outcome.app_redirect else "?"
        deep_link = outcome.app_redirect + sep + urlencode(query)
        detail = "" if outcome.ok else problem_texts(outcome.code, lang)[0]
        context = {"deep_link": deep_link, "status": query["status"], "detail": detail}
        return _no_store(
            render(request, "deeplink.html", lang, context, status_code=200 if outcome.ok else 400)
        )
    if outcome.ok:
        back = None
        if outcome.return_url:
            back = with_query(
                outcome.return_url, {"status": "success", "domain": outcome.host or ""}
            )
        context = {"host": outcome.host, "return_url": back, "return_seconds": AUTO_RETURN_SECONDS}
        return _no_store(render(request, "success.html", lang, context))
    title, why, fix = problem_texts(outcome.code, lang)
    retry = None
    if outcome.return_url:
        retry = with_query(outcome.return_url, {"status": "error", "error": outcome.code})
    context = {
        "title": title,
        "why": why,
        "fix": fix,
        # amoCRM's own words; not when they only repeat the code (access_denied).
        "detail": outcome.detail if outcome.detail != outcome.code else None,
        "code": outcome.code,
        "retry_url": retry,
    }
    return _no_store(render(request, "error.html", lang, context, status_code=400))


def _no_store(response: HTMLResponse) -> HTMLResponse:
    response.headers["Cache-Control"] = "no-store"
    return response


def prefers_html(accept: str | None) -> bool:
    """Does an ``Accept`` header rank HTML above JSON (a browser opening the URL)?"""
    ranks: dict[str, float] = {}
    for item in (accept or "").split(",")[:32]:
        kind, _, params = item.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        kind = kind.strip().lower()
        ranks[kind] = max(ranks.get(kind, 0.0), quality)

    def rank(kind: str) -> float:
        major = kind.split("/", 1)[0]
        return ranks.get(kind, ranks.get(f"{major}/*", ranks.get("*/*", 0.0)))

    return rank("text/html") > rank("application/json")


def index_page(request: Request, links: dict[str, str]) -> HTMLResponse:
    """The service's ``/`` for a browser: where things are, in the page's language."""
    lang = page_language(request)
    response = render(request, "index.html", lang, {"links": links, "version": __version__})
    response.headers["Vary"] = "Accept, Accept-Language"
    return response
