"""amoCRM's token endpoint (``/oauth2/access_token`` on the account host): the POST with its retries,
refusals turned into errors with advice, and :func:`exchange_code` for the authorization code."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from amobridge.amo._logging import log
from amobridge.amo.auth.tokens import TokenSet
from amobridge.amo.domains import (
    AccountDomain,
    default_user_agent,
    parse_account_domain,
    request_target,
)
from amobridge.amo.errors import (
    AmoAuthError,
    AmoConnectionError,
    AmoError,
    AmoRateLimited,
    AmoServerError,
    AmoTimeout,
    error_from_response,
    parse_problem,
)
from amobridge.amo.retry import RetryPolicy

TOKEN_PATH = "/oauth2/access_token"  # noqa: S105 - a URL path, not a secret

_HINT_ADVICE = {
    "authorization code has expired": "codes live 20 minutes: exchange it right after the redirect, "
    "or authorize again",
    "authorization code has been revoked": "a code can be exchanged only once: authorize again",
    "cannot decrypt the authorization code": "the code was mistyped or belongs to another "
    "integration: authorize again",
    "redirect uri is not associated with client": "redirect_uri must equal the integration's "
    "setting exactly",
    "invalid account": "the code or token belongs to another account: use the host from the "
    "redirect's `referer` parameter",
    "token has been revoked": "the refresh token was already used (they are single-use) or the "
    "integration was disabled: connect the integration again",
    "token has expired": "the refresh token aged out (3 months without a refresh): connect the "
    "integration again",
}


def _advice(status: int, title: str | None, hint: str | None, oauth_error: str | None) -> str:
    if hint:
        lowered = hint.lower()
        for known, advice in _HINT_ADVICE.items():
            if lowered.startswith(known):
                return advice
        if "client_id" in lowered or "client_secret" in lowered:
            return "check client_id and client_secret against the integration's Keys tab"
    if status == 401 and not hint:
        return "client_secret does not match client_id: check the integration's Keys tab"
    if oauth_error == "invalid_grant":
        return "the grant is no longer valid: connect the integration again"
    return "check the integration's settings, then connect it again"


@dataclass(eq=False)
class TokenEndpointRefusal(Exception):
    """A 4xx from the token endpoint (internal: turned into AmoAuthError/AmoReauthRequired)."""

    status: int
    url: str
    title: str | None
    detail: str | None
    hint: str | None
    oauth_error: str | None
    body_excerpt: str
    request_id: str | None

    def error(self, cls: type[AmoAuthError], what: str, note: str = "") -> AmoAuthError:
        said = self.oauth_error or self.hint or self.detail or self.title or "refused"
        if self.oauth_error and self.hint:
            said = f"{self.oauth_error}: {self.hint}"
        advice = _advice(self.status, self.title, self.hint, self.oauth_error)
        return cls(
            f"amoCRM's token endpoint refused the {what} ({self.status}: {said}); {advice}.{note}",
            hint=self.hint,
            oauth_error=self.oauth_error,
            status=self.status,
            method="POST",
            url=self.url,
            title=self.title,
            detail=self.detail,
            body_excerpt=self.body_excerpt,
            request_id=self.request_id,
        )


async def post_token_endpoint(
    http: httpx.AsyncClient,
    host: str,
    body: dict[str, str],
    *,
    base_url: str | None,
    deadline: float,
    retry: RetryPolicy,
    clock: Callable[[], float],
) -> dict[str, Any]:
    """POST to ``https://{host}/oauth2/access_token``; retries transport failures, 429 and 5xx
    within ``retry``; returns the 200 body; raises TokenEndpointRefusal for other 4xx."""
    url, headers = request_target(host, TOKEN_PATH, base_url)
    shown_url = f"https://{host}{TOKEN_PATH}"
    headers["Accept"] = "application/json"
    attempts = 0
    spent = 0.0
    while True:
        attempts += 1
        started = time.monotonic()
        hint: float | None = None
        failure: AmoError
        try:
            async with asyncio.timeout(deadline):
                response = await http.post(url, json=body, headers=headers)
        except (httpx.TransportError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError | httpx.TimeoutException):
                failure = AmoTimeout(
                    f"amoCRM's token endpoint at {host} did not answer within {deadline:g} s; "
                    "try again later"
                )
            else:
                failure = AmoConnectionError(
                    f"could not reach amoCRM's token endpoint at {host} "
                    f"({type(exc).__name__}); check the network and try again"
                )
            failure.__cause__ = exc
        else:
            status = response.status_code
            content = response.content
            if status == 200:
                try:
                    data = json.loads(content)
                except ValueError:
                    data = None
                if isinstance(data, dict):
                    return data
                failure = AmoServerError(
                    "amoCRM's token endpoint answered 200 without a JSON object; try again later",
                    status=status,
                    method="POST",
                    url=shown_url,
                )
            elif status == 429 or status >= 500:
                failure = error_from_response(
                    status=status,
                    method="POST",
                    url=shown_url,
                    body=content,
                    request_id=response.headers.get("x-request-id"),
                    retry_after_header=response.headers.get("retry-after"),
                    now=clock(),
                )
                if isinstance(failure, AmoRateLimited):
                    hint = failure.retry_after
            else:
                problem = parse_problem(content)
                raise TokenEndpointRefusal(
                    status=status,
                    url=shown_url,
                    title=_str_or_none(problem.get("title")),
                    detail=_str_or_none(problem.get("detail")),
                    hint=_str_or_none(problem.get("hint")),
                    oauth_error=_str_or_none(problem.get("error")),
                    body_excerpt=content[:500].decode("utf-8", "replace"),
                    request_id=response.headers.get("x-request-id"),
                )
        if hint is not None and hint > retry.max_retry_after:
            raise failure
        spent += time.monotonic() - started
        wait = retry.next_wait(attempts=attempts, spent=spent, hint=hint)
        if wait is None:
            raise failure
        log.warning(
            "amoCRM token endpoint at %s failed (%s); retry %d in %.2f s",
            host,
            type(failure).__name__,
            attempts,
            wait,
        )
        await retry.wait(wait)
        spent += wait


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


async def exchange_code(
    domain: str | AccountDomain,
    *,
    client_id: str,
    client_secret: str,
    redirect_uri: str,
    code: str,
    transport: httpx.AsyncBaseTransport | None = None,
    base_url: str | None = None,
    http: httpx.AsyncClient | None = None,
    timeout: float = 30.0,  # noqa: ASYNC109 - a per-request deadline, applied with asyncio.timeout
    retry: RetryPolicy | None = None,
    clock: Callable[[], float] = time.time,
    user_agent: str | None = None,
) -> TokenSet:
    """Exchange an authorization code for a token pair at the **account's** token endpoint
    (``https://{referer}/oauth2/access_token``).

    ``domain`` is the ``referer`` from the redirect. Refusals raise :class:`AmoAuthError` with
    amoCRM's ``hint`` and what to do (a code lives 20 minutes and works once).
    """
    account = parse_account_domain(domain)
    body = {
        "client_id": client_id,
        "client_secret": client_secret,
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
    }
    # One retry at most, and only when nothing could have been processed twice: a code works once.
    policy = retry or RetryPolicy(max_attempts=2)
    owned = http is None
    client = http or httpx.AsyncClient(
        transport=transport, headers={"User-Agent": user_agent or default_user_agent()}
    )
    try:
        now = clock()
        try:
            data = await post_token_endpoint(
                client,
                account.host,
                body,
                base_url=base_url,
                deadline=timeout,
                retry=policy,
                clock=clock,
            )
        except TokenEndpointRefusal as refusal:
            raise refusal.error(AmoAuthError, "authorization code") from None
        try:
            return TokenSet.from_token_response(data, now=now, domain=account.host)
        except ValueError as exc:
            raise AmoServerError(
                f"amoCRM's token endpoint answered 200 with an unusable body ({exc}); "
                "authorize again",
                status=200,
                method="POST",
                url=f"https://{account.host}{TOKEN_PATH}",
            ) from None
    finally:
        if owned:
            await client.aclose()
