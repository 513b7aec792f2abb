"""Every error the SDK raises, in one tree, and the one function that maps a reply to its class.

::

    AmobridgeError                      (amobridge.errors)
    └── AmoError
        ├── AmoTransportError           no usable reply: the network or a deadline failed
        │   ├── AmoTimeout
        │   └── AmoConnectionError
        ├── AmoHTTPError                amoCRM answered with an error status
        │   ├── AmoAuthError            401 (and token-endpoint failures)
        │   │   └── AmoReauthRequired   the grant is dead: the user must connect again
        │   ├── AmoAccountNotFound      401 "Account not found": wrong account domain
        │   ├── AmoNotFound             404: unknown route (missing entities are 204, not 404)
        │   ├── AmoValidationError      400 / 422, with ``errors`` (field errors)
        │   ├── AmoRateLimited          429, with ``retry_after``
        │   ├── AmoForbidden            403: missing rights or IP whitelist
        │   │   └── AmoBanned           403 account-wide ban, with ``retry_at``
        │   ├── AmoPaymentRequired      402: the subscription has ended
        │   └── AmoServerError          5xx (and 2xx replies that are not JSON)
        ├── AmoAmbiguousWrite           a create whose outcome is unknown: reconcile, don't resend
        ├── AmoTokenStoreError          a refreshed token pair could not be saved
        └── AmoInvalidDomain            (also a ConfigurationError) not an account domain

Every message says what happened and what to do. No message, ``repr`` or attribute holds a token
or secret: bodies are cut to an excerpt and passed through :func:`mask_text`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from amobridge.amo._logging import mask_text
from amobridge.errors import AmobridgeError, ConfigurationError

ACCOUNT_NOT_FOUND_MESSAGE = "account not found: use your subdomain, e.g. acme.amocrm.ru"
BODY_EXCERPT_LENGTH = 500


class AmoError(AmobridgeError):
    """Root of every error of ``amobridge.amo``."""


# --- transport -----------------------------------------------------------------------------------


class AmoTransportError(AmoError):
    """No usable reply: the connection failed or a deadline passed.

    ``attempts``: how many times the request was sent (set by ``AmoClient.send``)."""

    attempts: int = 1


class AmoTimeout(AmoTransportError):
    """amoCRM did not answer in time."""


class AmoConnectionError(AmoTransportError):
    """The connection to amoCRM failed or broke off."""


# --- HTTP ----------------------------------------------------------------------------------------


class AmoHTTPError(AmoError):
    """amoCRM answered with an error status.

    Attributes: ``status``, ``method``, ``url`` (no credentials in it), ``title`` and ``detail`` of
    amoCRM's problem body, ``body_excerpt`` (masked), ``request_id`` (amoCRM's ``X-Request-Id``).
    """

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None,
        method: str = "",
        url: str = "",
        title: str | None = None,
        detail: str | None = None,
        body_excerpt: str = "",
        request_id: str | None = None,
    ) -> None:
        super().__init__(mask_text(message))
        self.status = status
        self.method = method
        self.url = url
        self.title = title
        self.detail = detail
        self.body_excerpt = mask_text(body_excerpt)
        self.request_id = request_id

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class AmoAuthError(AmoHTTPError):
    """amoCRM refused the credentials (API 401, or a token-endpoint failure).

    ``hint`` and ``oauth_error`` carry amoCRM's ``hint`` and an RFC 6749 ``error`` when present.
    """

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        oauth_error: str | None = None,
        **fields: Any,
    ) -> None:
        super().__init__(message, **fields)
        self.hint = hint
        self.oauth_error = oauth_error


class AmoReauthRequired(AmoAuthError):
    """The grant is dead (refresh token spent, revoked or expired; integration disabled).

    Nothing the SDK can do fixes it: a user must connect the integration again. The token provider
    refuses further calls without touching the network until new tokens are stored.
    """


class AmoAccountNotFound(AmoHTTPError):
    """The account domain is wrong (``www``, ``api-b…``, a typo, amocrm.ru for a Kommo account)."""


class AmoNotFound(AmoHTTPError):
    """404: amoCRM has no such route. Missing entities answer 204 (``None``), never 404."""


@dataclass(frozen=True)
class FieldError:
    """One entry of amoCRM's ``validation-errors``: which item, which field, what is wrong."""

    request_id: str | None
    code: str | None
    path: str | None
    detail: str | None

    def __str__(self) -> str:
        where = self.path or "?"
        item = f"[item {self.request_id}] " if self.request_id is not None else ""
        text = f"{item}{where}: {self.code or 'invalid'}"
        return f"{text} ({self.detail})" if self.detail else text


class AmoValidationError(AmoHTTPError):
    """400/422: amoCRM rejected the request data; ``errors`` lists the field errors."""

    def __init__(self, message: str, *, errors: Sequence[FieldError] = (), **fields: Any) -> None:
        super().__init__(message, **fields)
        self.errors: list[FieldError] = list(errors)


class AmoRateLimited(AmoHTTPError):
    """429: over amoCRM's limit of 7 requests per second. ``retry_after``: seconds, if known."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.retry_after = retry_after


class AmoForbidden(AmoHTTPError):
    """403 that is not a ban: the connecting user lacks rights, or an IP whitelist refused us."""


class AmoBanned(AmoForbidden):
    """403 account-wide block after repeated 429s. ``retry_at``: unix time the SDK tries again.

    amoCRM gives no end time (support lifts the block), so ``retry_at`` is the client's guess; until
    then every call for that account raises this error without touching the network.
    """

    def __init__(self, message: str, *, retry_at: float, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.retry_at = retry_at


class AmoPaymentRequired(AmoHTTPError):
    """402: the account's subscription has ended (writes stop at once, reads 30 days later)."""


class AmoServerError(AmoHTTPError):
    """5xx from amoCRM (or a 2xx reply whose body is not JSON)."""

    retryable = True

    def __init__(self, message: str, *, trace_id: str | None = None, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.trace_id = trace_id


# --- outcomes the caller must handle -------------------------------------------------------------


class AmoAmbiguousWrite(AmoError):
    """A create request left, but whether amoCRM applied it is unknown (timeout, dropped
    connection or 5xx after sending). The SDK never re-sends it blindly: look the entities up by the
    ``request_ids`` sent (or by your own marker) and send again only those not found.

    ``__cause__`` is the underlying AmoTransportError or AmoServerError.
    """

    def __init__(
        self, *, method: str, path: str, request_ids: Sequence[str], reason: str, attempts: int = 1
    ) -> None:
        self.method = method
        self.path = path
        self.request_ids: list[str] = list(request_ids)
        self.reason = reason
        self.attempts = attempts
        shown = ", ".join(self.request_ids[:10])
        if len(self.request_ids) > 10:
            shown += f", … ({len(self.request_ids)} in all)"
        ids = f" request_ids: {shown}." if self.request_ids else " (no request_ids were sent)."
        super().__init__(
            mask_text(
                f"{method} {path} may or may not have been applied by amoCRM ({reason}); it was not "
                f"re-sent to avoid duplicates.{ids} Look the entities up (by request_id or your "
                "own marker) and create only the missing ones."
            )
        )


class AmoTokenStoreError(AmoError):
    """The token store failed to save a refreshed pair. The pair is kept in memory ("pending") and
    the provider saves it on the next call; it is never used unsaved, because amoCRM's refresh
    token is single-use and an unsaved pair would be lost on restart."""


class AmoInvalidDomain(AmoError, ConfigurationError):
    """The value given as the account domain is not one (``www``, ``api-b…``, not amoCRM's)."""


# --- mapping a reply to an error -----------------------------------------------------------------


def _excerpt(body: bytes | str) -> str:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = " ".join(text.split())
    if len(text) > BODY_EXCERPT_LENGTH:
        text = text[:BODY_EXCERPT_LENGTH] + "…"
    return mask_text(text)


def parse_problem(body: bytes | str) -> dict[str, Any]:
    """amoCRM's problem body as a dict; ``{}`` when the body is not a JSON object (HTML pages)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def parse_retry_after(header: str | None, body: dict[str, Any], *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or HTTP date) or a body
    ``retry_after`` (Kommo); None when neither is usable."""
    if header:
        value = header.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            from email.utils import parsedate_to_datetime

            try:
                when = parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                when = None
            if when is not None:
                if when.tzinfo is None:
                    when = when.replace(tzinfo=UTC)
                return max(0.0, when.timestamp() - now)
    raw = body.get("retry_after")
    if isinstance(raw, int | float) and not isinstance(raw, bool) and raw >= 0:
        return float(raw)
    if isinstance(raw, str):
        try:
            return max(0.0, float(raw))
        except ValueError:
            return None
    return None


def parse_field_errors(body: dict[str, Any]) -> list[FieldError]:
    """amoCRM's ``validation-errors``: ``[{"request_id", "errors": [{code, path, detail}]}]``."""
    found: list[FieldError] = []
    groups = body.get("validation-errors")
    if not isinstance(groups, list):
        return found
    for group in groups:
        if not isinstance(group, dict):
            continue
        rid = group.get("request_id")
        request_id = None if rid is None else str(rid)
        errors = group.get("errors")
        if not isinstance(errors, list):
            continue
        for item in errors:
            if not isinstance(item, dict):
                continue
            found.append(
                FieldError(
                    request_id=request_id,
                    code=_opt_str(item.get("code")),
                    path=_opt_str(item.get("path")),
                    detail=_opt_str(item.get("detail")),
                )
            )
    return found


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def is_ban(status: int, body: bytes | str, problem: dict[str, Any]) -> bool:
    """Whether a 403 is amoCRM's rate ban rather than missing rights.

    The ban comes as nginx's HTML page or a JSON problem about blocking; a 403 JSON problem that
    speaks of rights or access is a permissions error (webhooks API for non-admins, IP whitelist).
    """
    if status != 403:
        return False
    if not problem:
        return True  # HTML / empty body: the nginx ban page
    text = " ".join(str(problem.get(k, "")) for k in ("title", "detail", "hint")).lower()
    return any(word in text for word in ("block", "ban", "limit", "заблок"))


def _label(status: int, title: str | None) -> str:
    return f"{status} {title}" if title else str(status)


def error_from_response(
    *,
    status: int,
    method: str,
    url: str,
    body: bytes | str,
    request_id: str | None = None,
    retry_after_header: str | None = None,
    now: float = 0.0,
    ban_retry_at: float | None = None,
) -> AmoHTTPError:
    """The error for an amoCRM reply with a non-2xx ``status`` (the one place statuses map to
    classes). ``now`` (unix time) resolves HTTP-date ``Retry-After``; ``ban_retry_at`` is the
    time a 403 ban is assumed to end."""
    problem = parse_problem(body)
    title = _opt_str(problem.get("title"))
    detail = _opt_str(problem.get("detail"))
    hint = _opt_str(problem.get("hint"))
    fields: dict[str, Any] = {
        "status": status,
        "method": method,
        "url": url,
        "title": title,
        "detail": detail,
        "body_excerpt": _excerpt(body),
        "request_id": request_id,
    }
    what = f"{method} {url}"
    said = detail or hint or title or (f"body: {fields['body_excerpt'][:120]}" if body else "")
    said_part = f": {said}" if said else ""

    if status == 401:
        if (detail or "").strip().lower() == "account not found":
            return AmoAccountNotFound(
                f"{ACCOUNT_NOT_FOUND_MESSAGE} (amoCRM answered 401 Account not found to {what})",
                **fields,
            )
        return AmoAuthError(
            f"amoCRM refused the access token for {what} ({_label(status, title)}{said_part}). "
            "Refresh the token; if that fails, connect the integration again.",
            hint=hint,
            oauth_error=_opt_str(problem.get("error")),
            **fields,
        )
    if status == 402:
        return AmoPaymentRequired(
            f"amoCRM refused {what} because the account's subscription has ended (402). "
            "Ask the account owner to renew it; writes stay refused until then.",
            **fields,
        )
    if status == 403:
        if is_ban(status, body, problem):
            retry_at = ban_retry_at if ban_retry_at is not None else now + 3600
            when = datetime.fromtimestamp(retry_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            return AmoBanned(
                f"amoCRM has blocked this account's API access (403 on {what}), usually after "
                f"repeated requests over 7 per second. Calls are refused until {when}; lower the "
                "request rate and ask amoCRM support to lift the block.",
                retry_at=retry_at,
                **fields,
            )
        return AmoForbidden(
            f"amoCRM forbade {what} ({_label(status, title)}{said_part}). The user who connected "
            "the integration may lack rights for it (webhooks need an admin), or an IP whitelist "
            "refuses this server.",
            **fields,
        )
    if status == 404:
        return AmoNotFound(
            f"amoCRM has no route {what} (404{said_part}). Check the path; missing entities are "
            "answered with 204, not 404.",
            **fields,
        )
    if status == 429:
        retry_after = parse_retry_after(retry_after_header, problem, now=now)
        wait = f" Retry after {retry_after:g} s." if retry_after is not None else ""
        return AmoRateLimited(
            f"amoCRM rate limit hit on {what} (429). Send at most 7 requests per second per "
            f"account; repeated 429s get the account blocked.{wait}",
            retry_after=retry_after,
            **fields,
        )
    if status in (400, 422):
        errors = parse_field_errors(problem)
        if errors:
            listed = "; ".join(str(e) for e in errors[:5])
            more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
            said_part = f": {detail or 'validation failed'} — {listed}{more}"
        return AmoValidationError(
            f"amoCRM rejected the data of {what} ({_label(status, title)}{said_part}). Fix the "
            "request (see .errors) and send it again; sending it unchanged fails the same way.",
            errors=errors,
            **fields,
        )
    if status >= 500:
        return AmoServerError(
            f"amoCRM failed on {what} ({_label(status, title)}{said_part}). This is on amoCRM's "
            "side; try again later.",
            trace_id=_opt_str(problem.get("trace_id")),
            **fields,
        )
    return AmoHTTPError(
        f"amoCRM answered {what} with {_label(status, title)}{said_part}. Check the request.",
        **fields,
    )
