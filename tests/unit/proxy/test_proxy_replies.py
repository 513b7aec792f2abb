"""What the proxy passes on in each direction, and what it answers when amoCRM gave no reply."""

from __future__ import annotations

import time

import httpx
import pytest

from amobridge.amo.client import RawReply
from amobridge.amo.errors import (
    AmoBanned,
    AmoConnectionError,
    AmoRateLimited,
    AmoReauthRequired,
    AmoTimeout,
    AmoTokenStoreError,
)
from amobridge.connect.clients import ConnectionDisconnected
from amobridge.proxy.service import (
    ATTEMPTS_HEADER,
    ProxyCall,
    forwarded_request_headers,
    refusal_of,
    reply_of,
)


def call(method: str = "POST") -> ProxyCall:
    return ProxyCall(method, "leads", [("with", "contacts")], b"[]", {})


def test_only_the_listed_request_headers_reach_amocrm() -> None:
    sent = forwarded_request_headers(
        [
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Accept", "application/hal+json"),
            ("Authorization", "Bearer amb_host_app_key"),
            ("X-API-Key", "amb_host_app_key"),
            ("Cookie", "session=1"),
            ("Host", "evil.example"),
            ("Connection", "keep-alive"),
            ("If-Modified-Since", "Mon, 03 Jun 2024 10:00:00 GMT"),
            ("accept", "text/html"),  # a repeated header: the first wins
        ]
    )
    assert sent == {
        "content-type": "application/x-www-form-urlencoded",
        "accept": "application/hal+json",
        "if-modified-since": "Mon, 03 Jun 2024 10:00:00 GMT",
    }


def test_the_reply_keeps_status_body_and_its_own_headers_only() -> None:
    response = httpx.Response(
        201,
        content=b'{"id": 1}',
        headers={
            "content-type": "application/hal+json",
            "x-request-id": "abc",
            "set-cookie": "session=amo",
            "connection": "close",
            "transfer-encoding": "chunked",
            "keep-alive": "timeout=5",
        },
    )
    reply = reply_of(RawReply(response, 2))
    assert (reply.status, reply.content) == (201, b'{"id": 1}')
    assert reply.headers == {
        "content-type": "application/hal+json",
        "x-request-id": "abc",
        ATTEMPTS_HEADER: "2",
    }


@pytest.mark.parametrize(
    ("body", "header", "expected"),
    [
        (b'{"title": "Too Many Requests"}', None, "1"),
        (b'{"retry_after": 2.5}', None, "3"),
        (b"{}", "7", "7"),
    ],
)
def test_every_429_carries_a_retry_after(body: bytes, header: str | None, expected: str) -> None:
    headers = {"retry-after": header} if header else {}
    reply = reply_of(RawReply(httpx.Response(429, content=body, headers=headers), 1))
    assert reply.headers["retry-after"] == expected


def test_a_write_without_a_reply_is_504_or_502_and_says_it_was_not_sent_again() -> None:
    timeout = AmoTimeout("no reply")
    refusal = refusal_of(timeout, call("POST"), "user-42")
    assert (refusal.status_code, refusal.code) == (504, "amocrm_timeout")
    assert refusal.extra == {"retried": False, "attempts": 1}
    assert "not sent again" in refusal.detail
    assert "?" not in refusal.detail  # the label has no query (and so no query values)

    dropped = AmoConnectionError("broke off")
    refusal = refusal_of(dropped, call("PATCH"), "user-42")
    assert (refusal.status_code, refusal.code) == (502, "amocrm_unavailable")


def test_a_read_without_a_reply_says_how_often_it_was_tried() -> None:
    failure = AmoTimeout("no reply")
    failure.attempts = 5
    refusal = refusal_of(failure, call("GET"), "user-42")
    assert refusal.extra == {"retried": True, "attempts": 5}


def test_bans_and_long_waits_carry_retry_after() -> None:
    banned = AmoBanned("banned", retry_at=time.time() + 600, status=403)
    refusal = refusal_of(banned, call("GET"), "u")
    assert (refusal.status_code, refusal.code) == (403, "amocrm_banned")
    assert refusal.headers is not None
    assert 590 <= int(refusal.headers["Retry-After"]) <= 600

    limited = AmoRateLimited("wait", retry_after=120.0, status=429)
    refusal = refusal_of(limited, call("POST"), "u")
    assert (refusal.status_code, refusal.code, refusal.headers) == (
        429,
        "rate_limited",
        {"Retry-After": "120"},
    )


def test_dead_and_disconnected_grants_say_how_to_reconnect() -> None:
    for failure, code in [
        (AmoReauthRequired("revoked", status=401), "reauth_required"),
        (ConnectionDisconnected("c1"), "connection_disconnected"),
    ]:
        refusal = refusal_of(failure, call(), "user 42")
        assert (refusal.status_code, refusal.code) == (409, code)
        assert "GET /amocrm/auth?owner=user+42" in refusal.detail


def test_a_token_store_failure_is_503() -> None:
    refusal = refusal_of(AmoTokenStoreError("disk full"), call(), "u")
    assert (refusal.status_code, refusal.code) == (503, "unavailable")
