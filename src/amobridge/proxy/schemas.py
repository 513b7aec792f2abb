"""What the OpenAPI document says about the proxy: its parameters, the request bodies and answers
of each method with examples, and its errors. The proxy validates no body of its own (amoCRM
does), so there are no request models here."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path

from amobridge.connect.schemas import AUTH_ERRORS, error_response

OwnerPath = Annotated[
    str,
    Path(
        description=(
            "Your app's id for whoever connected, whose connection the call uses: an opaque "
            "string of at most 255 characters. An API key acts for the owner it names here; a "
            "user's JWT only for its own `sub` (another owner is 403 `owner_mismatch`)."
        ),
        openapi_examples={"owner": {"summary": "A host app's user id", "value": "user-42"}},
    ),
]
ApiPathParameter = Annotated[
    str,
    Path(
        description=(
            "The amoCRM API v4 path after `/api/v4/`, with its slashes (`leads`, `leads/123`, "
            "`leads/pipelines/42/statuses`). No `.` or `..` segment, no empty segment, no "
            "encoded `/`, `\\`, `?` or `#`. The query string is forwarded as it is."
        ),
        openapi_examples={
            "account": {"summary": "The account", "value": "account"},
            "lead": {"summary": "One lead", "value": "leads/123"},
        },
    ),
]

ACCOUNT_EXAMPLE: dict[str, Any] = {
    "id": 31415926,
    "name": "Acme",
    "subdomain": "acme",
    "country": "RU",
    "currency": "RUB",
    "current_user_id": 504141,
    "_links": {"self": {"href": "https://acme.amocrm.ru/api/v4/account"}},
}
LEADS_BODY_EXAMPLE: list[dict[str, Any]] = [{"name": "Website order #1017", "price": 25000}]
LEADS_CREATED_EXAMPLE: dict[str, Any] = {
    "_links": {"self": {"href": "https://acme.amocrm.ru/api/v4/leads"}},
    "_embedded": {
        "leads": [
            {
                "id": 19619,
                "request_id": "0",
                "_links": {"self": {"href": "https://acme.amocrm.ru/api/v4/leads/19619"}},
            }
        ]
    },
}
LEAD_PATCH_EXAMPLE: dict[str, Any] = {"price": 30000, "status_id": 142}
LEAD_UPDATED_EXAMPLE: dict[str, Any] = {
    "id": 19619,
    "updated_at": 1718000000,
    "_links": {"self": {"href": "https://acme.amocrm.ru/api/v4/leads/19619"}},
}
PROBLEM_EXAMPLE: dict[str, Any] = {
    "title": "Bad Request",
    "type": "https://httpstatus.es/400",
    "status": 400,
    "detail": "Request validation failed",
    "validation-errors": [
        {
            "request_id": "0",
            "errors": [{"code": "NotSupportedChoice", "path": "status_id", "detail": "invalid"}],
        }
    ],
}

_ANY_JSON: dict[str, Any] = {}
_FORM = {"type": "object", "additionalProperties": {"type": "string"}}
_ATTEMPTS = {
    "X-Amobridge-Attempts": {
        "description": "How many times amobridge sent the request to amoCRM (a GET may be "
        "retried; a write is sent again only when the earlier attempt never connected)",
        "schema": {"type": "integer", "minimum": 1},
    }
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before sending it again",
        "schema": {"type": "integer", "minimum": 1},
    }
}


def request_body(example: Any, summary: str) -> dict[str, Any]:
    """``openapi_extra`` for a method with a body: JSON (what amoCRM's API takes) or a form,
    forwarded as they are."""
    return {
        "requestBody": {
            "required": False,
            "description": "Sent to amoCRM as it is, with its Content-Type",
            "content": {
                "application/json": {
                    "schema": _ANY_JSON,
                    "examples": {"body": {"summary": summary, "value": example}},
                },
                "application/x-www-form-urlencoded": {
                    "schema": _FORM,
                    "examples": {"form": {"summary": "A form body", "value": {"name": "x"}}},
                },
            },
        }
    }


def _passed_through(description: str, example: Any, summary: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": _ATTEMPTS,
        "content": {
            "application/hal+json": {
                "schema": _ANY_JSON,
                "examples": {"amocrm": {"summary": summary, "value": example}},
            }
        },
    }


def _with_amocrm_problem(status: int, answer: dict[str, Any]) -> dict[str, Any]:
    """An error status both amobridge (JSON) and amoCRM (``application/problem+json``, passed
    through) may answer."""
    example = {**PROBLEM_EXAMPLE, "status": status}
    if status != 400:
        example = {key: value for key, value in example.items() if key != "validation-errors"}
        example["title"], example["detail"] = "Error", "amoCRM's own detail"
    example["type"] = f"https://httpstatus.es/{status}"
    answer["content"]["application/problem+json"] = {
        "schema": {"type": "object"},
        "examples": {"amocrm": {"summary": f"amoCRM's own {status}", "value": example}},
    }
    answer["description"] += "; or amoCRM's own answer, passed through"
    return answer


def proxy_errors(*, with_body: bool) -> dict[int | str, dict[str, Any]]:
    """The error answers of every proxy operation (413 only where a body is documented)."""
    answers: dict[int | str, dict[str, Any]] = {
        400: _with_amocrm_problem(
            400,
            error_response(
                400,
                "invalid_proxy_path",
                "owner_required",
                "invalid_owner",
                "invalid_content_length",
                description="A path the proxy refuses (`.`/`..`, an encoded slash, an empty "
                "segment), or an owner that cannot be one",
            ),
        ),
        401: _with_amocrm_problem(
            401, error_response(401, *AUTH_ERRORS, description="No valid API key or user token")
        ),
        403: _with_amocrm_problem(
            403,
            error_response(
                403,
                "owner_mismatch",
                "amocrm_banned",
                description="A user's token naming another owner, or amoCRM's ban still "
                "running (nothing sent; `Retry-After` says when to try again)",
            ),
        ),
        404: _with_amocrm_problem(
            404,
            error_response(
                404,
                "connection_not_found",
                "not_an_api_path",
                description="The owner has never connected, or the path is not under `/api/v4/`",
            ),
        ),
        409: error_response(
            409,
            "connection_disconnected",
            "reauth_required",
            description="The owner's connection cannot call amoCRM: connect again "
            "(`GET /amocrm/auth?owner=…`)",
        ),
        429: _with_amocrm_problem(
            429,
            error_response(
                429,
                "rate_limited",
                description="amoCRM asked for a wait (a write is not retried after a 429)",
            ),
        ),
        502: error_response(
            502,
            "amocrm_unavailable",
            description="The connection to amoCRM broke off. `retried` and `attempts` say how "
            "often it was sent; a write is not sent again once its body may have left",
        ),
        503: error_response(
            503,
            "storage_unavailable",
            "unavailable",
            description="The service cannot use its database right now: retry later",
        ),
        504: error_response(
            504,
            "amocrm_timeout",
            description="amoCRM did not answer in time. A write was not sent again "
            "(`retried: false`): amoCRM may have applied it, so look it up before resending",
        ),
    }
    for status in (403, 429):
        answers[status]["headers"] = _RETRY_AFTER
    if with_body:
        answers[413] = error_response(
            413, "body_too_large", description="Request body over AMOBRIDGE_SERVER__MAX_BODY_BYTES"
        )
    return answers


def get_responses() -> dict[int | str, dict[str, Any]]:
    return {
        200: _passed_through(
            "amoCRM's answer, passed through: its status, body and Content-Type (any other "
            "status amoCRM answers is passed through the same way)",
            ACCOUNT_EXAMPLE,
            "GET /proxy/user-42/api/v4/account",
        ),
        204: {"description": "amoCRM's empty answer (an empty list, a missing entity)"},
        **proxy_errors(with_body=False),
    }


def write_responses(example: Any, summary: str) -> dict[int | str, dict[str, Any]]:
    return {
        200: _passed_through(
            "amoCRM's answer, passed through: its status, body and Content-Type. Never sent "
            "twice: a 5xx, a 429 or a lost reply comes back to you",
            example,
            summary,
        ),
        204: {"description": "amoCRM's empty answer"},
        **proxy_errors(with_body=True),
    }
