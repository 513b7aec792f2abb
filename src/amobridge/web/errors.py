"""One error shape for the whole HTTP API, with a 4xx/5xx status::

    {"error": "connection_not_found", "detail": "no amoCRM connection for this owner"}

``error`` is a stable snake_case code a client may branch on; ``detail`` a sentence for people
(what went wrong and what to do), which may be reworded. A :class:`ServiceError` adds its
``extra`` fields. The same shape for Starlette's 404/405, the body limit's 413, validation's
422 and the unexpected 500 (documented as ``ErrorBody`` in the OpenAPI document)."""

from __future__ import annotations

import http
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from amobridge.errors import (
    CODE_FOR_STATUS,
    Conflict,
    Forbidden,
    NotFound,
    ServiceError,
    Unauthorized,
)

__all__ = [
    "Conflict",
    "Forbidden",
    "NotFound",
    "ServiceError",
    "Unauthorized",
    "error_body",
    "install_error_handlers",
]

log = logging.getLogger("amobridge.web")


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def error_body(code: str, detail: str, **extra: object) -> dict[str, object]:
    """The error shape; ``extra`` never replaces ``error`` or ``detail``."""
    return {**extra, "error": code, "detail": detail}


def _http_detail(request: Request, exc: StarletteHTTPException) -> str:
    """Starlette's own 404/405 say only "Not Found": say where the routes are listed instead."""
    try:
        phrase = http.HTTPStatus(exc.status_code).phrase
    except ValueError:
        phrase = ""
    if isinstance(exc.detail, str) and exc.detail and exc.detail != phrase:
        return exc.detail
    root = request.scope.get("root_path", "")
    listed = f"{root}/openapi.json"
    if exc.status_code == 404:
        return f"no such route or file: the routes are listed in {listed} (and at {root}/docs)"
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("allow") or (exc.headers or {}).get("Allow")
        use = f"use {allowed}" if allowed else f"see {listed}"
        return f"{request.method} is not allowed on this route: {use}"
    return phrase.lower() or "error"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.code, exc.detail, **exc.extra),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            error_body("validation_error", _validation_detail(exc)), status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = CODE_FOR_STATUS.get(exc.status_code, f"http_{exc.status_code}")
        return JSONResponse(
            error_body(code, _http_detail(request, exc)),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(
            error_body(
                "internal_error",
                "internal error: the service logged it; try again, and tell the service's "
                "operator if it persists",
            ),
            status_code=500,
        )
