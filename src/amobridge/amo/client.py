"""``AmoClient``: the one HTTP pipeline every amoCRM call goes through.

A request passes, in order: the ban breaker (a banned account is refused without a call), the
in-flight gate (at most :data:`MAX_IN_FLIGHT` on the wire), the rate limiter (``acquire``), the
token provider (refreshing before expiry; asked only once the limiter admitted the request, so a
request that queued meanwhile carries the newest token), one attempt under an overall deadline
(``asyncio.timeout``: httpx's own timeouts do not apply on in-process transports), the limiter's
``release`` (the slot counts until the reply, then one more window), then the reply is mapped by
:func:`~amobridge.amo.errors.error_from_response` and retried or raised as the table in
:mod:`amobridge.amo.retry` says. The endpoint resources (``client.leads`` …) only build paths and
bodies and call :meth:`AmoClient.request_json` (the ``Requester`` seam).

:meth:`AmoClient.send` takes the same path for one raw request (a proxy's): bytes in, amoCRM's
reply out whatever its status, retried only as its ``retry`` mode allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json as jsonlib
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import httpx

from amobridge.amo._logging import log
from amobridge.amo._requester import RetryMode
from amobridge.amo.auth import OAuthTokenProvider, TokenProvider, TokenStore
from amobridge.amo.domains import (
    AccountDomain,
    default_user_agent,
    parse_account_domain,
    request_target,
)
from amobridge.amo.errors import (
    AmoAccountNotFound,
    AmoAmbiguousWrite,
    AmoAuthError,
    AmoBanned,
    AmoConnectionError,
    AmoError,
    AmoHTTPError,
    AmoRateLimited,
    AmoServerError,
    AmoTimeout,
    AmoTransportError,
    error_from_response,
)
from amobridge.amo.ratelimit import InMemoryRateLimiter, RateLimitBackend
from amobridge.amo.resources import (
    AccountResource,
    CompaniesResource,
    ContactsResource,
    CustomFieldsResource,
    LeadsResource,
    NotesResource,
    PipelinesResource,
    TagsResource,
    UsersResource,
    WebhooksResource,
)
from amobridge.amo.retry import BanBreaker, RetryPolicy, failure_was_sent

API_PREFIX = "/api/v4/"
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=30.0, write=30.0, pool=30.0)
DEFAULT_ATTEMPT_TIMEOUT = 60.0
MAX_IN_FLIGHT = 100
"""Requests one client has on the wire at once: its connection pool's size (httpx's default).
Beyond it a request waits in the client, before it takes a token, not in httpx's pool queue with
a token already in its headers (which a refresh meanwhile would make stale)."""

SendRetry = Literal["safe", "unsent"]
"""How :meth:`AmoClient.send` may repeat a request:

- ``"safe"`` (reads): 429, 5xx and transport failures are retried as :class:`RetryPolicy` says;
- ``"unsent"`` (writes): only what provably never reached amoCRM is sent again — a failure to
  connect, and the one retry after a 401 refresh. A 429, a 5xx or a lost reply ends the call.
"""
_NOT_FORWARDED = frozenset({"authorization", "host", "cookie", "content-length"})


@dataclass(frozen=True)
class RawReply:
    """amoCRM's reply to :meth:`AmoClient.send` and how many times the request was sent."""

    response: httpx.Response
    attempts: int


def _api_path(path: str) -> tuple[str, list[tuple[str, str]]]:
    """``leads``, ``/leads``, ``/api/v4/leads`` or a ``_links`` href → (``/api/v4/leads``, query).

    An absolute href keeps only its path and query: requests always go to the client's own
    account host, so a link can never send the token elsewhere.
    """
    query: list[tuple[str, str]] = []
    if "://" in path:
        parts = urlsplit(path)
        path, query = parts.path, parse_qsl(parts.query, keep_blank_values=True)
    elif "?" in path:
        path, _, raw = path.partition("?")
        query = parse_qsl(raw, keep_blank_values=True)
    path = path.lstrip("/")
    if path.startswith("api/v4/"):
        path = path[len("api/v4/") :]
    if not path or ".." in path.split("/"):
        raise ValueError(f"not an API path: {path!r}")
    return API_PREFIX + path, query


def _request_ids(body: Any) -> list[str]:
    """The ``request_id`` of every item in a create body (what reconciliation searches for)."""
    items = body if isinstance(body, list) else [body]
    return [
        str(item["request_id"])
        for item in items
        if isinstance(item, dict) and item.get("request_id") is not None
    ]


def _log_release_failure(task: asyncio.Future[Any]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.warning("the rate limiter failed to release a slot (%s)", type(exc).__name__)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class AmoClient:
    """An async amoCRM/Kommo API v4 client for one account.

    ``domain``: ``acme``, ``acme.amocrm.ru``, ``https://acme.kommo.com/`` or the OAuth ``referer``.
    ``token_provider``: :class:`~amobridge.amo.auth.OAuthTokenProvider` or
    :class:`~amobridge.amo.auth.StaticTokenProvider` (anything with ``get_token``/``refresh``).
    ``transport``: any ``httpx.AsyncBaseTransport`` (``MockTransport`` in unit tests,
    ``ASGITransport(app=create_sandbox_app())`` against the sandbox in-process).
    ``base_url``: send requests there instead (a sandbox on ``http://127.0.0.1:8010``) while the
    ``Host`` header keeps naming the account.
    ``rate_limiter``: shared between clients of the same integration and account in a process
    (default: a private 7 requests/second limiter). ``ban_breaker``: likewise for 403 bans.
    """

    def __init__(
        self,
        domain: str | AccountDomain,
        *,
        token_provider: TokenProvider,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT,
        rate_limiter: RateLimitBackend | None = None,
        rate_limit_key: str | None = None,
        retry: RetryPolicy | None = None,
        ban_breaker: BanBreaker | None = None,
        user_agent: str | None = None,
        base_url: str | None = None,
        clock: Callable[[], float] = time.time,
        owns_token_provider: bool = False,
    ) -> None:
        if attempt_timeout <= 0:
            raise ValueError("attempt_timeout must be positive")
        self._domain = parse_account_domain(domain)
        self._tokens = token_provider
        self._owns_tokens = owns_token_provider
        self._limiter: RateLimitBackend = rate_limiter or InMemoryRateLimiter()
        self._rate_key = rate_limit_key
        self._retry = retry or RetryPolicy()
        self._breaker = ban_breaker or BanBreaker()
        self._base_url = base_url
        self._attempt_timeout = attempt_timeout
        self._clock = clock
        self._rate_blocked_until: dict[str, float] = {}
        self.user_agent = user_agent or default_user_agent()
        self._http = httpx.AsyncClient(
            transport=transport,
            timeout=timeout,
            # As many idle connections kept as may be in flight: with httpx's default of 20, a
            # burst that pauses (a refresh, a busy event loop) closes the rest and reconnects.
            limits=httpx.Limits(
                max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT
            ),
            headers={"User-Agent": self.user_agent, "Accept": "application/json"},
            follow_redirects=False,
        )
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._closed = False
        # The endpoints, each speaking through this client's request_json (the Requester seam).
        self.account = AccountResource(self)
        self.users = UsersResource(self)
        self.pipelines = PipelinesResource(self)
        self.leads = LeadsResource(self)
        self.contacts = ContactsResource(self)
        self.companies = CompaniesResource(self)
        self.tags = TagsResource(self)
        self.notes = NotesResource(self)
        self.custom_fields = CustomFieldsResource(self)
        self.webhooks = WebhooksResource(self)

    @classmethod
    def oauth(
        cls,
        domain: str | AccountDomain,
        *,
        client_id: str,
        client_secret: str,
        redirect_uri: str,
        store: TokenStore,
        key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        base_url: str | None = None,
        **options: Any,
    ) -> AmoClient:
        """A client with its own :class:`OAuthTokenProvider` (closed with the client).
        ``key`` defaults to ``"{client_id}@{host}"``."""
        account = parse_account_domain(domain)
        provider = OAuthTokenProvider(
            client_id=client_id,
            client_secret=client_secret,
            redirect_uri=redirect_uri,
            store=store,
            key=key or f"{client_id}@{account.host}",
            domain=account,
            transport=transport,
            base_url=base_url,
            retry=options.get("retry"),
        )
        return cls(
            account,
            token_provider=provider,
            transport=transport,
            base_url=base_url,
            owns_token_provider=True,
            **options,
        )

    def __repr__(self) -> str:
        return f"AmoClient({self._domain.host!r}, token_provider={self._tokens!r})"

    # --- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> AmoClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._http.aclose()
        if self._owns_tokens:
            closer = getattr(self._tokens, "aclose", None)
            if closer is not None:
                await closer()

    # --- state ---------------------------------------------------------------------------------

    @property
    def domain(self) -> AccountDomain:
        return self._domain

    @property
    def token_provider(self) -> TokenProvider:
        return self._tokens

    @property
    def rate_limit_key(self) -> str:
        """``"{integration}@{account host}"``: the key the rate limiter paces."""
        if self._rate_key is not None:
            return self._rate_key
        integration = getattr(self._tokens, "integration_id", None) or "default"
        return f"{integration}@{self._domain.host}"

    def reset_ban(self) -> None:
        """Forget a detected 403 ban for this account (after amoCRM support lifted it)."""
        self._breaker.reset(self._domain.host)

    def _sync_domain(self) -> None:
        domain = getattr(self._tokens, "domain", None)
        if isinstance(domain, AccountDomain) and domain != self._domain:
            log.warning("amoCRM account %s moved to %s", self._domain.host, domain.host)
            self._domain = domain

    # --- the pipeline --------------------------------------------------------------------------

    async def request_json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        retry: RetryMode = "safe",
    ) -> Any:
        """Send one API request (``path`` relative to ``/api/v4/``) and return the decoded JSON of
        a 2xx reply, or None for 204 (amoCRM's "empty list" / "missing entity").

        ``retry="create"`` marks a POST that creates entities: it is retried only when nothing can
        have reached amoCRM; otherwise an unknown outcome raises AmoAmbiguousWrite.
        """
        if self._closed:
            raise RuntimeError("this AmoClient is closed")
        if retry not in ("safe", "create"):
            raise ValueError("retry must be 'safe' or 'create'")
        method = method.upper()
        api_path, query = _api_path(path)
        merged: list[tuple[str, Any]] = list(query)
        for name, value in (params or {}).items():
            if value is None:
                continue
            if isinstance(value, bool):
                value = "true" if value else "false"
            merged.append((name, value))
        return await self._run(method, api_path, merged, json, retry, uuid.uuid4().hex[:12])

    async def send(
        self,
        method: str,
        path: str,
        *,
        params: Sequence[tuple[str, str]] = (),
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        retry: SendRetry | None = None,
    ) -> RawReply:
        """Send one raw API request and return amoCRM's reply, whatever its status.

        ``path`` is relative to ``/api/v4/`` as for :meth:`request_json`; ``content`` is sent as
        is, with ``headers`` (never ``Authorization``, ``Host`` or ``Cookie``: the client sets the
        first two itself). The request takes the usual path — the ban breaker, the pace, the
        token (a 401 refreshes it once and sends again) — and ``retry`` (default: ``"safe"`` for
        GET and HEAD, ``"unsent"`` otherwise) says what else may be repeated (:data:`SendRetry`).

        Raises ``AmoBanned`` (the breaker is open: nothing sent), ``AmoRateLimited`` (amoCRM asked
        for a wait longer than the policy waits out: nothing sent), ``AmoReauthRequired`` and
        ``AmoTransportError`` (no reply; ``attempts`` says how often it was sent). A 403 ban reply
        opens the breaker and is returned like any other reply.
        """
        if self._closed:
            raise RuntimeError("this AmoClient is closed")
        method = method.upper()
        if retry is None:
            retry = "safe" if method in ("GET", "HEAD") else "unsent"
        if retry not in ("safe", "unsent"):
            raise ValueError("retry must be 'safe' or 'unsent'")
        api_path, query = _api_path(path)
        extra = {
            name: value
            for name, value in (headers or {}).items()
            if name.lower() not in _NOT_FORWARDED
        }
        merged: list[tuple[str, Any]] = [*query, *params]
        rid = uuid.uuid4().hex[:12]
        return await self._send(method, api_path, merged, content, extra, retry, rid)

    async def _send(
        self,
        method: str,
        api_path: str,
        params: list[tuple[str, Any]],
        content: bytes | None,
        headers: dict[str, str],
        mode: SendRetry,
        rid: str,
    ) -> RawReply:
        """:meth:`send`'s loop: :meth:`_run`'s steps, ending in a reply instead of an error."""
        attempts = 0  # what the retry policy counts (a refresh retry is not a failure)
        sent = 0  # what the reply reports: every time the request went out
        spent = 0.0
        refreshed = False
        while True:
            self._sync_domain()
            host = self._domain.host
            self._check_breaker(host, method, api_path)
            key = self.rate_limit_key
            self._check_rate_block(key, method, api_path)
            failure: AmoError
            hint: float | None = None
            response: httpx.Response | None = None
            lost: httpx.TransportError | TimeoutError | None = None
            async with self._in_flight:
                await self._limiter.acquire(key)
                try:
                    token = await self._tokens.get_token()
                    self._sync_domain()
                    attempts += 1
                    sent += 1
                    started = time.monotonic()
                    try:
                        response = await self._attempt(
                            method, api_path, params, None, token, content=content, extra=headers
                        )
                    except (httpx.TransportError, TimeoutError) as exc:
                        lost = exc
                finally:
                    await self._release_slot(key)
            spent += time.monotonic() - started
            if response is None:
                assert lost is not None
                lost_reply = self._transport_failure(lost, method, api_path)
                lost_reply.attempts = sent
                self._log_attempt(method, api_path, None, started, rid, attempts, None, lost_reply)
                if mode == "unsent" and failure_was_sent(lost):
                    raise lost_reply
                failure = lost_reply
                wait = self._retry.next_wait(attempts=attempts, spent=spent)
                if wait is None:
                    raise lost_reply
            else:
                status = response.status_code
                amo_rid = response.headers.get("x-request-id")
                self._log_attempt(method, api_path, status, started, rid, attempts, amo_rid, None)
                if status not in (401, 403, 429) and status < 500:
                    return RawReply(response, sent)  # a success, or amoCRM's own refusal
                error = error_from_response(
                    status=status,
                    method=method,
                    url=api_path,
                    body=response.content,
                    request_id=amo_rid,
                    retry_after_header=response.headers.get("retry-after"),
                    now=self._clock(),
                    ban_retry_at=self._breaker.retry_at_if_tripped(),
                )
                if isinstance(error, AmoBanned):
                    self._breaker.trip(host, error.retry_at)
                    log.error(
                        "amoCRM banned account %s until about %s", host, _when(error.retry_at)
                    )
                    return RawReply(response, sent)
                if status == 401 and isinstance(error, AmoAuthError) and not refreshed:
                    refreshed = True
                    await self._tokens.refresh(token)  # raises AmoReauthRequired when dead
                    attempts -= 1
                    continue
                if isinstance(error, AmoRateLimited):
                    hint = error.retry_after
                    if hint is not None and hint > self._retry.max_retry_after:
                        self._rate_blocked_until[key] = time.monotonic() + hint
                        return RawReply(response, sent)
                    if hint is not None:
                        await self._limiter.pause(key, hint)
                elif isinstance(error, AmoServerError):
                    hint = self._server_hint(response)
                else:
                    return RawReply(response, sent)  # a 403 without a ban, a second 401
                if mode == "unsent":
                    return RawReply(response, sent)
                wait = self._retry.next_wait(attempts=attempts, spent=spent, hint=hint)
                if wait is None:
                    return RawReply(response, sent)
                failure = error
            log.warning(
                "amoCRM %s %s failed (%s); retry %d in %.2f s [request %s]",
                method,
                api_path,
                type(failure).__name__,
                attempts,
                wait,
                rid,
            )
            await self._retry.wait(wait)
            spent += wait

    async def _run(
        self,
        method: str,
        api_path: str,
        params: list[tuple[str, Any]],
        body: Any,
        mode: RetryMode,
        rid: str,
    ) -> Any:
        attempts = 0
        spent = 0.0  # seconds in attempts and backoff waits (queueing for the limiter excluded)
        refreshed = False
        while True:
            self._sync_domain()
            host = self._domain.host
            self._check_breaker(host, method, api_path)
            key = self.rate_limit_key
            self._check_rate_block(key, method, api_path)
            failure: AmoError
            hint: float | None = None
            response: httpx.Response | None = None
            lost: httpx.TransportError | TimeoutError | None = None
            # The in-flight gate first: a request admitted by the limiter goes out at once.
            async with self._in_flight:
                await self._limiter.acquire(key)
                try:
                    # The token is taken once the request may go out: one that queued while a
                    # refresh happened carries the new token instead of drawing a 401.
                    token = await self._tokens.get_token()
                    self._sync_domain()
                    attempts += 1
                    started = time.monotonic()
                    try:
                        response = await self._attempt(method, api_path, params, body, token)
                    except (httpx.TransportError, TimeoutError) as exc:
                        lost = exc
                finally:
                    # Exactly once per acquire, whatever ended the attempt (reply, transport
                    # error, timeout, a failing token provider, cancellation).
                    await self._release_slot(key)
            spent += time.monotonic() - started
            if response is None:
                assert lost is not None
                failure = self._transport_failure(lost, method, api_path)
                self._log_attempt(method, api_path, None, started, rid, attempts, None, failure)
                if mode == "create" and failure_was_sent(lost):
                    raise self._ambiguous(method, api_path, body, failure, attempts) from failure
            else:
                status = response.status_code
                amo_rid = response.headers.get("x-request-id")
                self._log_attempt(method, api_path, status, started, rid, attempts, amo_rid, None)
                if 200 <= status < 300:
                    return self._decode(response, method, api_path, mode, body, attempts)
                error = error_from_response(
                    status=status,
                    method=method,
                    url=api_path,
                    body=response.content,
                    request_id=amo_rid,
                    retry_after_header=response.headers.get("retry-after"),
                    now=self._clock(),
                    ban_retry_at=self._breaker.retry_at_if_tripped(),
                )
                if isinstance(error, AmoBanned):
                    self._breaker.trip(host, error.retry_at)
                    log.error(
                        "amoCRM banned account %s until about %s", host, _when(error.retry_at)
                    )
                    raise error
                if isinstance(error, AmoAccountNotFound):
                    raise error
                if status == 401 and isinstance(error, AmoAuthError):
                    if refreshed:
                        raise error
                    refreshed = True
                    await self._tokens.refresh(token)  # raises AmoReauthRequired when dead
                    attempts -= 1  # the refresh retry is not a failure
                    continue
                if isinstance(error, AmoRateLimited):
                    hint = error.retry_after
                    if hint is not None and hint > self._retry.max_retry_after:
                        self._rate_blocked_until[key] = time.monotonic() + hint
                        raise error
                    if hint is not None:
                        # amoCRM named a wait: it applies to the whole connection.
                        await self._limiter.pause(key, hint)
                    # Without a hint only this request backs off (the policy's jittered wait):
                    # one 429 must not stall every caller of the connection.
                elif isinstance(error, AmoServerError):
                    if mode == "create":
                        raise self._ambiguous(method, api_path, body, error, attempts) from error
                    hint = self._server_hint(response)
                else:
                    raise error
                failure = error
            wait = self._retry.next_wait(attempts=attempts, spent=spent, hint=hint)
            if wait is None:
                raise failure
            log.warning(
                "amoCRM %s %s failed (%s); retry %d in %.2f s [request %s]",
                method,
                api_path,
                type(failure).__name__,
                attempts,
                wait,
                rid,
            )
            await self._retry.wait(wait)
            spent += wait  # the scheduled wait counts, even when a test makes sleeping instant

    async def _release_slot(self, key: str) -> None:
        """Tell the limiter this attempt ended (its slot counts one more window from now).

        Called exactly once per ``acquire``. Shielded: a caller cancelled mid-request still frees
        its slot. A backend without ``release`` (an older third-party limiter) counts slots from
        ``acquire`` alone, so there is nothing to tell it. A failing release is logged, not
        raised: the reply in hand matters more, and the backend expires the slot anyway.
        """
        release = getattr(self._limiter, "release", None)
        if release is None:
            return
        task = asyncio.ensure_future(release(key))
        task.add_done_callback(_log_release_failure)
        with contextlib.suppress(Exception):  # logged by the callback
            await asyncio.shield(task)

    async def _attempt(
        self,
        method: str,
        api_path: str,
        params: list[tuple[str, Any]],
        body: Any,
        token: str,
        *,
        content: bytes | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        url, headers = request_target(self._domain.host, api_path, self._base_url)
        headers = {**(extra or {}), **headers}
        headers["Authorization"] = f"Bearer {token}"
        async with asyncio.timeout(self._attempt_timeout):
            return await self._http.request(
                method,
                url,
                params=params or None,
                json=body,
                content=content,
                headers=headers,
            )

    def _decode(
        self,
        response: httpx.Response,
        method: str,
        api_path: str,
        mode: RetryMode,
        body: Any,
        attempts: int,
    ) -> Any:
        content = response.content
        if response.status_code == 204 or not content.strip():
            return None
        try:
            return jsonlib.loads(content)
        except ValueError:
            error = AmoServerError(
                f"amoCRM answered {method} {api_path} with {response.status_code} and a body that "
                "is not JSON; try again later",
                status=response.status_code,
                method=method,
                url=api_path,
                body_excerpt=content[:500].decode("utf-8", "replace"),
                request_id=response.headers.get("x-request-id"),
            )
            if mode == "create":
                raise self._ambiguous(method, api_path, body, error, attempts) from error
            raise error from None

    def _server_hint(self, response: httpx.Response) -> float | None:
        raw = response.headers.get("retry-after")
        if not raw:
            return None
        try:
            return min(max(0.0, float(raw)), self._retry.max_retry_after)
        except ValueError:
            return None

    def _check_breaker(self, host: str, method: str, api_path: str) -> None:
        until = self._breaker.banned_until(host)
        if until is not None:
            raise AmoBanned(
                f"amoCRM blocked account {host} (403) and the client refuses {method} {api_path} "
                f"without calling amoCRM until {_when(until)}. Ask amoCRM support to lift the "
                "block, then call reset_ban().",
                retry_at=until,
                status=403,
                method=method,
                url=api_path,
            )

    def _check_rate_block(self, key: str, method: str, api_path: str) -> None:
        until = self._rate_blocked_until.get(key)
        if until is None:
            return
        left = until - time.monotonic()
        if left <= 0:
            del self._rate_blocked_until[key]
            return
        raise AmoRateLimited(
            f"amoCRM asked to wait before more requests; {method} {api_path} was not sent. "
            f"Retry after {left:.0f} s.",
            retry_after=left,
            status=429,
            method=method,
            url=api_path,
        )

    def _transport_failure(
        self, exc: BaseException, method: str, api_path: str
    ) -> AmoTransportError:
        failure: AmoTransportError
        if isinstance(exc, TimeoutError | httpx.TimeoutException):
            failure = AmoTimeout(
                f"amoCRM did not answer {method} {api_path} in time ({type(exc).__name__}, "
                f"deadline {self._attempt_timeout:g} s per attempt); try again later"
            )
        else:
            failure = AmoConnectionError(
                f"the connection to amoCRM failed during {method} {api_path} "
                f"({type(exc).__name__}); check the network and try again"
            )
        failure.__cause__ = exc
        return failure

    def _ambiguous(
        self, method: str, api_path: str, body: Any, cause: AmoError, attempts: int
    ) -> AmoAmbiguousWrite:
        if isinstance(cause, AmoHTTPError):
            reason = f"amoCRM answered {cause.status}"
        else:
            reason = type(cause).__name__.removeprefix("Amo").lower()
            reason = {"timeout": "no reply in time", "connectionerror": "connection broke off"}.get(
                reason, reason
            )
        error = AmoAmbiguousWrite(
            method=method,
            path=api_path,
            request_ids=_request_ids(body),
            reason=reason,
            attempts=attempts,
        )
        log.error("%s", error)
        return error

    def _log_attempt(
        self,
        method: str,
        api_path: str,
        status: int | None,
        started: float,
        rid: str,
        attempt: int,
        amo_request_id: str | None,
        failure: AmoError | None,
    ) -> None:
        elapsed_ms = (time.monotonic() - started) * 1000
        outcome = str(status) if status is not None else type(failure).__name__
        log.debug(
            "amoCRM %s %s -> %s in %.0f ms [request %s, attempt %d, amo request id %s]",
            method,
            api_path,
            outcome,
            elapsed_ms,
            rid,
            attempt,
            amo_request_id or "-",
            extra={
                "amo_method": method,
                "amo_path": api_path,
                "amo_status": status,
                "amo_duration_ms": round(elapsed_ms, 1),
                "amo_request_id": amo_request_id,
                "amobridge_request_id": rid,
                "amo_attempt": attempt,
            },
        )
