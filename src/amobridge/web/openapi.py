"""The service's OpenAPI document, finished so a client can be written from it alone.

FastAPI writes most of it from the routes. What it cannot know is added here, once, when the
document is first built:

- every JSON error answer (4xx and 5xx) has the ``ErrorBody`` schema — including the 422 that
  FastAPI would otherwise describe with its own ``HTTPValidationError`` array, a shape this
  service never sends (:mod:`amobridge.web.errors` answers ``{"error", "detail"}``);
- every error answer has an example, and every operation documents the 500 any route can give
  and, unless it uses no storage, the 503 of a database that cannot be used;
- the routes' answer examples are copied back as written: FastAPI drops every null from the
  document, which turned a status example's ``"domain": null`` into a missing key (and so an
  example its own schema refuses).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI, routing
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from amobridge.connect.schemas import ERROR_BODY_REF, ErrorBody, error_response

__all__ = ["API_DESCRIPTION", "finish_openapi", "install_openapi"]

API_DESCRIPTION = """\
Connects business backends to amoCRM / Kommo and keeps them connected.

An **owner** is your app's id for whoever connects (a user id, an account id): an opaque string of
at most 255 characters. Your backend starts a connection for an owner (`GET /amocrm/auth`), the
owner's browser consents on amoCRM, and amobridge keeps that connection's tokens fresh;
`GET /amocrm/status` tells you where it stands.

**Credentials.** Routes your app calls take an amobridge API key (`X-API-Key: amb_…`, or
`Authorization: Bearer amb_…`) or an end user's JWT (`Authorization: Bearer <jwt>`). The routes
amoCRM calls (callback, secrets, uninstall) and the health checks take none.

**Errors.** Every error answer in JSON has one shape,
`{"error": "<stable snake_case code>", "detail": "<what went wrong and what to do>"}`; branch on
`error`, show `detail`. Pages a browser sees (the callback's) are HTML.
"""

_DROPPED_SCHEMAS = ("HTTPValidationError", "ValidationError")
# Operations that never touch the database (and /readyz, which has a 503 of its own).
_NO_STORAGE = {"/", "/healthz"}


def _status(key: str) -> int | None:
    return int(key) if key.isdigit() else None


def _finish_error(status: int, answer: dict[str, Any]) -> None:
    json = answer.get("content", {}).get("application/json")
    if json is None:
        return  # an HTML page (the callback's errors), or no body
    schema = json.get("schema")
    if not schema or schema.get("$ref", "").endswith("/HTTPValidationError"):
        json["schema"] = {"$ref": ERROR_BODY_REF}
        if status == 422 or not answer.get("description"):
            answer["description"] = error_response(status)["description"]
    if "example" not in json and "examples" not in json:
        json["examples"] = error_response(status)["content"]["application/json"]["examples"]


def _api_routes(routes: Iterable[BaseRoute]) -> Iterable[Any]:
    """Every API route with its effective path and responses. FastAPI 0.16x keeps an included
    router as one entry (``iter_route_contexts`` walks into it); older ones copy its routes."""
    walk = getattr(routing, "iter_route_contexts", None)
    if walk is None:
        yield from (route for route in routes if isinstance(route, APIRoute))
        return
    for context in walk(list(routes)):
        if isinstance(context.original_route, APIRoute):
            yield context


def _restore_examples(document: dict[str, Any], routes: Iterable[BaseRoute]) -> None:
    paths = document.get("paths", {})
    for route in _api_routes(routes):
        if not route.include_in_schema:
            continue
        for method in route.methods:
            operation = paths.get(route.path_format, {}).get(method.lower())
            if operation is None:
                continue
            for status, answer in route.responses.items():
                documented = operation["responses"].get(str(status), {}).get("content", {})
                for media_type, media in answer.get("content", {}).items():
                    target = documented.get(media_type)
                    for key in ("example", "examples"):
                        if target is not None and key in media:
                            target[key] = copy.deepcopy(media[key])


def finish_openapi(document: dict[str, Any], routes: Iterable[BaseRoute] = ()) -> dict[str, Any]:
    """Finish FastAPI's ``document`` of ``routes`` in place (see the module's docstring);
    returns it."""
    _restore_examples(document, routes)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name in _DROPPED_SCHEMAS:
        schemas.pop(name, None)
    schemas.setdefault(
        "ErrorBody", ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    )
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            answers = operation.setdefault("responses", {})
            for key, answer in answers.items():
                status = _status(key)
                if status is not None and status >= 400:
                    _finish_error(status, answer)
            answers.setdefault("500", error_response(500))
            if path not in _NO_STORAGE:
                answers.setdefault("503", error_response(503, "storage_unavailable"))
    return document


def install_openapi(app: FastAPI) -> None:
    """Serve the finished document at ``/openapi.json`` (built once, on first use)."""
    build = app.openapi  # FastAPI's: cached, and built again when routes are added
    finished: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        document = build()
        if not finished or finished[0] is not document:
            finished[:] = [finish_openapi(document, app.routes)]
        return document

    app.openapi = openapi  # type: ignore[method-assign]
