"""The error tree, error_from_response, and the rule that no message carries a secret.

amoCRM's error bodies and statuses, a 429's ``retry_after``, a 403 ban served as HTML.
"""

from __future__ import annotations

import json

import pytest

from amobridge.amo import errors as e
from amobridge.errors import AmobridgeError, ConfigurationError

JWT = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJjbGllbnQifQ.c2lnbmF0dXJlLXZhbHVl"
REFRESH = "def50200" + "0123456789abcdef" * 8


def reply(status: int, body: object, **kw: object) -> e.AmoHTTPError:
    raw = body if isinstance(body, str) else json.dumps(body)
    return e.error_from_response(status=status, method="GET", url="/api/v4/leads", body=raw, **kw)  # type: ignore[arg-type]


def test_tree_is_rooted_at_amo_error() -> None:
    assert issubclass(e.AmoError, AmobridgeError)
    for cls in (e.AmoTimeout, e.AmoConnectionError):
        assert issubclass(cls, e.AmoTransportError)
    for cls in (
        e.AmoAuthError,
        e.AmoAccountNotFound,
        e.AmoNotFound,
        e.AmoValidationError,
        e.AmoRateLimited,
        e.AmoBanned,
        e.AmoPaymentRequired,
        e.AmoServerError,
    ):
        assert issubclass(cls, e.AmoHTTPError)
        assert issubclass(cls, e.AmoError)
    assert issubclass(e.AmoReauthRequired, e.AmoAuthError)
    assert issubclass(e.AmoBanned, e.AmoForbidden)
    for cls in (e.AmoAmbiguousWrite, e.AmoTokenStoreError):
        assert issubclass(cls, e.AmoError)
    assert issubclass(e.AmoInvalidDomain, ConfigurationError)


@pytest.mark.parametrize(
    ("status", "body", "cls", "advice"),
    [
        (401, {"detail": "Invalid user name or password"}, e.AmoAuthError, "Refresh the token"),
        (
            401,
            {"title": "Unauthorized", "detail": "Account not found"},
            e.AmoAccountNotFound,
            e.ACCOUNT_NOT_FOUND_MESSAGE,
        ),
        (402, {"detail": "Payment Required"}, e.AmoPaymentRequired, "renew"),
        (403, "<html><center>nginx</center></html>", e.AmoBanned, "support"),
        (403, {"detail": "Account is blocked"}, e.AmoBanned, "support"),
        (403, {"detail": "Access denied"}, e.AmoForbidden, "lack rights"),
        (404, {"detail": "Cannot GET /api/v4/x"}, e.AmoNotFound, "204"),
        (422, {"detail": "Limit 250 per page"}, e.AmoValidationError, "Fix the request"),
        (429, {"detail": "Too many"}, e.AmoRateLimited, "7 requests per second"),
        (
            500,
            {"title": "ErrInternalServer", "trace_id": "t-1"},
            e.AmoServerError,
            "try again later",
        ),
        (504, "<html>504 Gateway Time-out</html>", e.AmoServerError, "try again later"),
        (418, {"detail": "teapot"}, e.AmoHTTPError, "Check the request"),
    ],
)
def test_status_maps_to_class_with_advice(
    status: int, body: object, cls: type, advice: str
) -> None:
    error = reply(status, body, request_id="amo-rid-1")
    assert type(error) is cls
    assert advice in str(error)
    assert (error.status, error.method, error.url, error.request_id) == (
        status,
        "GET",
        "/api/v4/leads",
        "amo-rid-1",
    )


def test_server_error_keeps_trace_id_and_ban_gets_retry_at() -> None:
    server = reply(500, {"title": "ErrInternalServer", "trace_id": "abc"})
    assert isinstance(server, e.AmoServerError)
    assert server.trace_id == "abc"
    banned = reply(403, "<html>403</html>", now=1000.0, ban_retry_at=4600.0)
    assert isinstance(banned, e.AmoBanned)
    assert banned.retry_at == 4600.0


def test_validation_errors_are_parsed() -> None:
    body = {
        "validation-errors": [
            {
                "request_id": "0",
                "errors": [
                    {
                        "code": "NotSupportedChoice",
                        "path": "custom_fields_values.0.field_id",
                        "detail": "d",
                    },
                    {"code": "InvalidType", "path": "price"},
                ],
            },
            {"request_id": 1, "errors": "garbage"},
            "garbage",
        ],
        "title": "Bad Request",
        "status": 400,
        "detail": "Request validation failed",
    }
    error = reply(400, body)
    assert isinstance(error, e.AmoValidationError)
    assert error.errors == [
        e.FieldError("0", "NotSupportedChoice", "custom_fields_values.0.field_id", "d"),
        e.FieldError("0", "InvalidType", "price", None),
    ]
    assert "price: InvalidType" in str(error)


@pytest.mark.parametrize(
    ("header", "body", "expected"),
    [
        (None, {"retry_after": 300}, 300.0),
        ("5", {}, 5.0),
        ("Wed, 21 Oct 2015 07:28:10 GMT", {}, 10.0),
        (None, {"retry_after": "7"}, 7.0),
        (None, {}, None),
        ("soon", {"retry_after": True}, None),
    ],
)
def test_retry_after_from_header_or_body(
    header: str | None, body: dict, expected: float | None
) -> None:
    now = 1445412480.0  # 07:28:00 on that date
    error = reply(429, body, retry_after_header=header, now=now)
    assert isinstance(error, e.AmoRateLimited)
    assert error.retry_after == expected


def test_no_token_or_secret_in_messages_reprs_or_excerpts() -> None:
    body = {
        "detail": f"token {JWT} refused",
        "hint": f"refresh_token={REFRESH}",
        "echo": {"client_secret": "super-secret-value", "Authorization": f"Bearer {JWT}"},
    }
    for status in (400, 401, 403, 404, 429, 500, 418):
        error = reply(status, body)
        for text in (str(error), repr(error), error.body_excerpt, error.detail or ""):
            if text is error.detail:
                continue  # the parsed field as amoCRM sent it is not shown anywhere by itself
            assert JWT not in text
            assert REFRESH not in text
            assert "super-secret-value" not in text
    ambiguous = e.AmoAmbiguousWrite(
        method="POST", path="/api/v4/leads", request_ids=[JWT, "k2"], reason="timeout"
    )
    assert JWT not in str(ambiguous)
    assert JWT not in repr(ambiguous)


def test_ambiguous_write_lists_request_ids() -> None:
    error = e.AmoAmbiguousWrite(
        method="POST", path="/api/v4/leads", request_ids=[str(i) for i in range(12)], reason="504"
    )
    assert error.request_ids == [str(i) for i in range(12)]
    assert "(12 in all)" in str(error)
    assert "create only the missing ones" in str(error)
    empty = e.AmoAmbiguousWrite(method="POST", path="/api/v4/x", request_ids=[], reason="r")
    assert "no request_ids" in str(empty)
