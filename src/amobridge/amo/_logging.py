"""Logging for the SDK: one stdlib logger, ``amobridge.amo``, that never shows a token.

Tokens are shown as a prefix (``eyJ0eX…``) by :func:`mask_token`; :func:`mask_text` finds anything
token-like in free text (JWTs, amoCRM's ``def502…`` refresh tokens and codes, ``Bearer …`` values,
``access_token``/``refresh_token``/``client_secret``/``token``/``X-Refresh-Token``/``Authorization``
fields in JSON, headers or form bodies) and masks it; authorization codes are ``def502…`` values.
In a URL's query string (an access-log line: uvicorn logs the full path) the values of
``api_key``, ``token``, ``access_token``, ``refresh_token``, ``code``, ``signature``,
``client_secret`` and ``state`` are masked whatever they look like, however short, and so is the
URL secret of a webhook destination (``…/webhooks/amocrm/{secret}``).
:class:`TokenMaskingFilter` applies it to every record as a safety net: it is installed on the
``amobridge.amo`` logger, and applications may add it to their own handlers too.
"""

from __future__ import annotations

import logging
import re

LOGGER_NAME = "amobridge.amo"
PREFIX_LENGTH = 6
ELLIPSIS = "…"

_SECRET_FIELDS = (
    "access_token",
    "refresh_token",
    "client_secret",
    "token",
    "x-refresh-token",
    "authorization",
)
_PATTERNS: tuple[re.Pattern[str], ...] = (
    # "field": "value" in JSON (quoted value), and field=value in form bodies / query strings.
    re.compile(
        r"""(?P<lead>["']?(?:"""
        + "|".join(re.escape(name) for name in _SECRET_FIELDS)
        + r""")["']?\s*[:=]\s*["']?)(?P<secret>(?:Bearer\s+)?[^"'&\s,}]{8,})""",
        re.IGNORECASE,
    ),
    # Bearer values anywhere.
    re.compile(r"(?P<lead>\bBearer\s+)(?P<secret>[A-Za-z0-9._~+/=-]{8,})", re.IGNORECASE),
    # JWTs (amoCRM access tokens) anywhere.
    re.compile(r"(?P<lead>)(?P<secret>\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*)"),
    # amoCRM's opaque refresh tokens and authorization codes: def502 + long hex.
    re.compile(r"(?P<lead>)(?P<secret>\bdef50[0-9a-f]{20,})", re.IGNORECASE),
    # The URL secret of a webhook destination (…/webhooks/amocrm/{secret}), in a path, a URL or
    # %-encoded in a query string (?filter[destination]=…): whoever has it can post webhooks.
    re.compile(
        r"(?P<lead>webhooks(?:/|%2F)amocrm(?:/|%2F))(?P<secret>[A-Za-z0-9_-]{8,})", re.IGNORECASE
    ),
)


# Query parameters whose value is a credential or single-use proof, whatever its shape: a state
# or an uninstall signature replays, a code is exchanged, a key or token authenticates.
_QUERY_SECRETS = (
    "api_key",
    "token",
    "access_token",
    "refresh_token",
    "code",
    "signature",
    "client_secret",
    "state",
)
_QUERY_PATTERN = re.compile(
    r"(?P<lead>[?&;](?:" + "|".join(_QUERY_SECRETS) + r")=)(?P<secret>[^&;#\s\"']+)",
    re.IGNORECASE,
)
# A value shorter than this shows no prefix at all: six characters of an eight-character code
# would be most of it.
_QUERY_PREFIX_FROM = 2 * PREFIX_LENGTH


def mask_token(token: str | None) -> str:
    """A token shown as its first characters and an ellipsis (``eyJ0eX…``); never the whole."""
    if not token:
        return "<none>"
    if token.lower().startswith("bearer "):
        return "Bearer " + mask_token(token[7:].strip())
    return token[:PREFIX_LENGTH] + ELLIPSIS


def _replace(match: re.Match[str]) -> str:
    secret = match.group("secret")
    if secret.endswith(ELLIPSIS):  # already masked
        return match.group(0)
    return match.group("lead") + mask_token(secret)


def _replace_query(match: re.Match[str]) -> str:
    secret = match.group("secret")
    if secret.endswith(ELLIPSIS):  # already masked
        return match.group(0)
    shown = secret[:PREFIX_LENGTH] if len(secret) >= _QUERY_PREFIX_FROM else ""
    return match.group("lead") + shown + ELLIPSIS


def mask_text(text: str) -> str:
    """``text`` with every token-like value cut to a prefix."""
    text = _QUERY_PATTERN.sub(_replace_query, text)
    for pattern in _PATTERNS:
        text = pattern.sub(_replace, text)
    return text


class TokenMaskingFilter(logging.Filter):
    """Masks token-like values in a record's final message (after %-formatting) and exception.

    String arguments are masked in place first, so a record keeps its ``args`` tuple: uvicorn's
    ``AccessFormatter`` unpacks the access record's (client, method, path, version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                mask_text(arg) if isinstance(arg, str) else arg for arg in record.args
            )
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a broken format string: leave it to the handler
            return True
        masked = mask_text(message)
        if masked != message:
            record.msg = masked
            record.args = None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            formatted = logging.Formatter().formatException(record.exc_info)
            record.exc_text = mask_text(formatted)
        return True


def get_logger() -> logging.Logger:
    """The SDK's logger, with the masking filter installed once."""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(f, TokenMaskingFilter) for f in logger.filters):
        logger.addFilter(TokenMaskingFilter())
    return logger


log = get_logger()
