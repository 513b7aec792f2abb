"""Logging: tokens masked to a prefix, the filter as a safety net, request lines with ids."""

from __future__ import annotations

import logging

import httpx
import pytest

from amobridge.amo._logging import LOGGER_NAME, TokenMaskingFilter, mask_text, mask_token
from amobridge.amo.auth import StaticTokenProvider
from amobridge.amo.client import AmoClient

JWT = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJjbGllbnQifQ.c2lnbmF0dXJlLXZhbHVl"
REFRESH = "def50200" + "fedcba9876543210" * 6


def test_mask_token_keeps_a_prefix() -> None:
    assert mask_token(JWT) == "eyJ0eX…"
    assert mask_token(f"Bearer {JWT}") == "Bearer eyJ0eX…"
    assert mask_token(None) == "<none>"


@pytest.mark.parametrize(
    "text",
    [
        f'{{"access_token": "{JWT}", "refresh_token": "{REFRESH}"}}',
        f"Authorization: Bearer {JWT}",
        f"client_secret=abcdefghijklmnop&refresh_token={REFRESH}&grant_type=refresh_token",
        f"X-Refresh-Token: {REFRESH}",
        f"the token {JWT} and the code {REFRESH}",
    ],
)
def test_mask_text_hides_every_token_form(text: str) -> None:
    masked = mask_text(text)
    assert JWT not in masked
    assert REFRESH not in masked
    assert "abcdefghijklmnop" not in masked
    assert mask_text(masked) == masked  # idempotent


def test_mask_text_leaves_ordinary_text_alone() -> None:
    text = (
        '{"code":"NotSupportedChoice","path":"custom_fields_values.0.field_id"} GET /api/v4/leads'
    )
    assert mask_text(text) == text


def test_filter_masks_arguments_and_exceptions() -> None:
    record = logging.LogRecord(LOGGER_NAME, logging.INFO, __file__, 1, "got %s", (JWT,), None)
    assert TokenMaskingFilter().filter(record)
    assert JWT not in record.getMessage()
    assert "eyJ0eX…" in record.getMessage()
    try:
        raise ValueError(f"bad refresh_token={REFRESH}")
    except ValueError as exc:
        record = logging.LogRecord(
            LOGGER_NAME,
            logging.ERROR,
            __file__,
            1,
            "failed",
            None,
            (type(exc), exc, exc.__traceback__),
        )
    TokenMaskingFilter().filter(record)
    assert record.exc_text is not None
    assert REFRESH not in record.exc_text


def test_sdk_logger_has_the_filter() -> None:
    logger = logging.getLogger(LOGGER_NAME)
    assert any(isinstance(f, TokenMaskingFilter) for f in logger.filters)


async def test_each_request_is_logged_with_ids_and_no_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = httpx.MockTransport(
        lambda request: httpx.Response(200, json={}, headers={"X-Request-Id": "amo-42"})
    )
    caplog.set_level(logging.DEBUG, logger=LOGGER_NAME)
    async with AmoClient(
        "acme", token_provider=StaticTokenProvider(JWT), transport=transport
    ) as amo:
        await amo.request_json("GET", "leads", params={"page": 2})
    (record,) = [r for r in caplog.records if r.name == LOGGER_NAME and "->" in r.getMessage()]
    message = record.getMessage()
    assert "GET /api/v4/leads -> 200" in message
    assert "amo-42" in message
    assert record.amo_status == 200  # type: ignore[attr-defined]
    assert record.amo_request_id == "amo-42"  # type: ignore[attr-defined]
    assert len(record.amobridge_request_id) == 12  # type: ignore[attr-defined]
    assert isinstance(record.amo_duration_ms, float)  # type: ignore[attr-defined]
    assert all(JWT not in r.getMessage() for r in caplog.records)
