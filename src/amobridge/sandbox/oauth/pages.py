"""The HTML the OAuth side answers with: Jinja pages (consent, finish, error, demo landing, the
index) and the packaged static files (the button script).

Each page speaks one language (:func:`page_language`: ``?lang=ru|en``, then the browser's
``Accept-Language``, else Russian, as amoCRM's own pages default to); its texts come from the
catalogue in :mod:`amobridge.i18n`."""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse

from amobridge.i18n import DEFAULT_LANGUAGE, Lang, Texts, choose_language


@functools.cache
def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("amobridge.sandbox", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
    )


def page_language(request: Request) -> Lang:
    return choose_language(request.query_params.get("lang"), request.headers.get("accept-language"))


def page(
    template: str, status: int = 200, *, lang: Lang = DEFAULT_LANGUAGE, **context: Any
) -> HTMLResponse:
    html = _templates().get_template(template).render(**context, lang=lang, t=Texts(lang))
    headers = {"Cache-Control": "no-store", "Vary": "Accept-Language"}
    return HTMLResponse(html, status_code=status, headers=headers)


def error_page(
    status: int, title: str, message: str, *, lang: Lang = DEFAULT_LANGUAGE
) -> HTMLResponse:
    return page("error.html", status, lang=lang, title=title, message=message, http_status=status)


def not_found_page(lang: Lang = DEFAULT_LANGUAGE) -> HTMLResponse:
    t = Texts(lang)
    return error_page(
        404, t.plain("sandbox.error.not_found"), t.plain("sandbox.error.not_found_why"), lang=lang
    )


@functools.cache
def static_file(name: str) -> bytes:
    return resources.files("amobridge.sandbox").joinpath("static", name).read_bytes()
