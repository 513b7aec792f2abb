"""The HTML the OAuth side answers with: Jinja pages (consent, finish, error, demo landing) and
the packaged static files (the button script)."""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import jinja2
from starlette.responses import HTMLResponse


@functools.cache
def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("amobridge.sandbox", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
    )


def page(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = _templates().get_template(template).render(**context)
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


def error_page(status: int, title: str, message: str) -> HTMLResponse:
    return page("error.html", status, title=title, message=message, http_status=status)


def not_found_page() -> HTMLResponse:
    return error_page(404, "404 Not Found", "Страница не найдена.")


@functools.cache
def static_file(name: str) -> bytes:
    return resources.files("amobridge.sandbox").joinpath("static", name).read_bytes()
