"""``amobridge.logs.configure_logging``: one handler on the root logger, text or JSON lines, and
every token-like value masked whoever logs it (nothing ever logs a token or secret)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from amobridge.amo._logging import TokenMaskingFilter
from amobridge.logs import configure_logging

JWT = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhY2NvdW50X2lkIjozMTIzNDU2N30.c2lnbmF0dXJlLXZhbHVl"
REFRESH = "def50200" + "0123456789abcdef" * 8
SECRET = "Zx8v0Qm3LkP9rT2wYb6nHs4d"


@pytest.fixture
def root() -> Iterator[logging.Logger]:
    """The root logger, restored afterwards (configure_logging replaces its handlers)."""
    logger = logging.getLogger()
    saved = (logger.handlers[:], logger.level)
    try:
        yield logger
    finally:
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])


def capture(root: logging.Logger) -> io.StringIO:
    [handler] = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    handler.setStream(stream)
    return stream


def log_everything(logger: logging.Logger) -> None:
    logger.info("exchanged, got %s and %s", JWT, REFRESH)  # as arguments
    logger.warning(f'token endpoint said {{"access_token": "{JWT}", "refresh_token": "{REFRESH}"}}')
    logger.info("POST body client_secret=%s&grant_type=refresh_token", SECRET)
    logger.info("headers: Authorization: Bearer %s", JWT)
    try:
        raise RuntimeError(f"refresh with refresh_token={REFRESH} failed")
    except RuntimeError:
        logger.exception("refresh failed for %s", "acme.amocrm.ru")


def assert_masked(text: str) -> None:
    assert JWT not in text
    assert REFRESH not in text
    assert SECRET not in text
    for part in JWT.split("."):
        assert part not in text
    assert "eyJ0eX…" in text
    assert "def502…" in text


def test_one_masking_handler_replaces_the_old_ones(root: logging.Logger) -> None:
    root.addHandler(logging.StreamHandler(io.StringIO()))
    root.addHandler(logging.StreamHandler(io.StringIO()))
    configure_logging("WARNING")
    [handler] = root.handlers
    assert any(isinstance(f, TokenMaskingFilter) for f in handler.filters)
    assert root.level == logging.WARNING
    configure_logging("DEBUG")  # again: still one handler
    assert len(root.handlers) == 1
    assert root.level == logging.DEBUG


def test_text_lines_mask_tokens_from_any_logger(root: logging.Logger) -> None:
    configure_logging("INFO")
    stream = capture(root)
    log_everything(logging.getLogger("somebody.else"))  # not the SDK's logger: no filter there
    text = stream.getvalue()
    assert_masked(text)
    assert "INFO somebody.else exchanged, got eyJ0eX… and def502…" in text
    assert "Traceback (most recent call last)" in text
    assert "RuntimeError: refresh with refresh_token=def502…" in text


def test_json_lines_mask_tokens_in_messages_and_exceptions(root: logging.Logger) -> None:
    configure_logging("INFO", json_lines=True)
    stream = capture(root)
    log_everything(logging.getLogger("somebody.else"))
    logging.getLogger("amobridge.connect").info(
        "подключено %s", JWT, extra={"connection_id": "c1", "owner": "alice"}
    )
    text = stream.getvalue()
    assert_masked(text)
    entries = [json.loads(line) for line in text.splitlines()]
    assert len(entries) == 6
    assert entries[0]["message"] == "exchanged, got eyJ0eX… and def502…"
    assert entries[0]["level"] == "INFO"
    assert entries[0]["logger"] == "somebody.else"
    assert "time" in entries[0]
    failed = entries[4]
    assert failed["level"] == "ERROR"
    assert "RuntimeError: refresh with refresh_token=def502…" in failed["exception"]
    last = entries[5]
    assert last["message"] == "подключено eyJ0eX…"  # non-ASCII kept readable
    assert (last["connection_id"], last["owner"]) == ("c1", "alice")


def test_levels_below_the_setting_are_dropped(root: logging.Logger) -> None:
    configure_logging("WARNING", json_lines=True)
    stream = capture(root)
    logging.getLogger("amobridge.web").info("hidden %s", JWT)
    logging.getLogger("amobridge.web").warning("shown")
    assert [json.loads(line)["message"] for line in stream.getvalue().splitlines()] == ["shown"]
